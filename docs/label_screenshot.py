"""Regenerate docs/label_page.png: the labeling page of a demo run, in headless Chromium.

    mulact-train --oracle human --run-dir /tmp/label-demo --rounds 1 --demo-train-images 20
    python docs/label_screenshot.py /tmp/label-demo docs/label_page.png

Needs Debian's chromium and chromium-driver and selenium (the dev extra).
"""
import re
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def main(run_dir: str, out: str, keys: str = "1") -> None:
    server = subprocess.Popen([sys.executable, "-m", "mulact.label.cli", run_dir, "--port", "0",
                               "--annotator", "alice"], stdout=subprocess.PIPE, text=True)
    try:
        url = None
        while url is None:
            line = server.stdout.readline()
            if not line:
                raise SystemExit("mulact-label exited")
            m = re.search(r"open (http://\S+)", line)
            url = m.group(1) if m else None
        opts = Options()
        opts.binary_location = "/usr/bin/chromium"
        with tempfile.TemporaryDirectory() as profile:
            for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        "--window-size=1320,800", f"--user-data-dir={profile}"):
                opts.add_argument(arg)
            driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
            try:
                driver.get(url)
                WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                    "return document.getElementById('full').complete && "
                    "document.getElementById('full').naturalWidth > 0"))
                driver.find_element(By.TAG_NAME, "body").send_keys(*keys)
                time.sleep(0.3)
                driver.save_screenshot(out)
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main(*sys.argv[1:])
