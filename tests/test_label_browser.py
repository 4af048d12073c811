"""The labeling page in a real browser (headless Debian Chromium + chromedriver, selenium), a
server killed between two answers, and the round trip mulact-train --oracle human -> page ->
rerun trains on the answers."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from _human_run import copy_run, start_human_run, template_human_run
from _tiny_run import env_for
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def template_run(tmp_path_factory):
    return template_human_run(tmp_path_factory.mktemp("cache"))


class Server:
    """``mulact-label RUN_DIR --port 0`` in a subprocess; ``url`` as it printed it."""

    def __init__(self, run, cache, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "mulact.label.cli", str(run), "--port", "0", *args],
                                     env=env_for(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        self.url = None
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server exited: {self.proc.stderr.read()[-2000:]}")
            m = re.search(r"open (http://\S+)", line)
            if m:
                self.url = m.group(1)
            assert time.time() - t0 < 120

    def post(self, path, body):
        req = urllib.request.Request(self.url.rstrip("/") + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def _chromium(profile):
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "install Debian's chromium and chromium-driver (.ci/run does)"
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,900", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


@pytest.fixture
def browser(tmp_path):
    driver = _chromium(tmp_path / "profile")
    yield driver
    driver.quit()


def _answers(run):
    d = run / "answers" / "round_01"
    return {int(p.name[2:7]): json.loads(p.read_text()) for p in sorted(d.glob("q_*.json"))} if d.exists() else {}


def _wait_text(driver, elem_id, pattern, timeout=60):
    WebDriverWait(driver, timeout).until(
        lambda d: re.search(pattern, d.find_element(By.ID, elem_id).text))


def _wait_query(driver, order, total=20):
    _wait_text(driver, "progress", rf"query {order + 1} of {total}\b")
    WebDriverWait(driver, 60).until(lambda d: d.execute_script(
        "return document.getElementById('crop').complete && document.getElementById('crop').naturalWidth > 0"))


def _button(driver, cls):
    return driver.find_element(By.CSS_SELECTOR, f'.cls[data-cls="{cls}"]')


def _keys(driver, *keys):
    driver.find_element(By.TAG_NAME, "body").send_keys(*keys)


def test_answer_three_queries_with_mouse_and_keyboard_undo_and_reload(template_run, tmp_path, browser):
    src, cache = template_run
    run = copy_run(src, tmp_path / "run")
    server = Server(run, cache)
    try:
        browser.get(server.url)
        _wait_query(browser, 0)
        n = len(browser.find_elements(By.CSS_SELECTOR, ".cls"))
        assert n == 20  # 19 Cityscapes classes + "other / none of these"
        assert "other / none of these" in _button(browser, 19).text
        # query 1: mouse only (toggle road on, sky on, road off again, other on)
        for c in (0, 10, 0, 19):
            _button(browser, c).click()
        assert _button(browser, 10).get_attribute("aria-pressed") == "true"
        assert _button(browser, 0).get_attribute("aria-pressed") == "false"
        browser.find_element(By.ID, "submit").click()
        _wait_query(browser, 1)
        # query 2: keyboard only (1 = road, 2 = sidewalk, Enter)
        _keys(browser, "1", "2", Keys.ENTER)
        _wait_query(browser, 2)
        # query 3: mouse on a class, Enter on the keyboard
        _button(browser, 13).click()
        _keys(browser, Keys.ENTER)
        _wait_query(browser, 3)
        assert sorted(_answers(run)) == [0, 1, 2]
        # Backspace undoes the last answer and shows its query with the answer preselected
        _keys(browser, Keys.BACKSPACE)
        _wait_query(browser, 2)
        assert _button(browser, 13).get_attribute("aria-pressed") == "true"
        assert sorted(_answers(run)) == [0, 1]
        browser.refresh()
        _wait_query(browser, 2)
        _wait_text(browser, "progress", r"^2 of 20 answered")
        got = _answers(run)
        assert got[0]["classes"] == [10, 19] and got[1]["classes"] == [0, 1]
        for a in got.values():
            assert a["round"] == 1 and a["seconds"] > 0 and len(a["click_seconds"]) >= 2
            assert a["click_seconds"] == sorted(a["click_seconds"]) and a["click_seconds"][-1] <= a["seconds"]
    finally:
        server.kill()


def test_killed_server_loses_and_duplicates_nothing(template_run, tmp_path):
    src, cache = template_run
    run = copy_run(src, tmp_path / "run")
    client = "kill-test-client-1"
    server = Server(run, cache)
    try:
        _, q = server.post("/api/next", {"client": client})
        status, _ = server.post("/api/answer", {"client": client, "round": 1, "order": q["order"], "classes": [2]})
        assert status == 200
    finally:
        server.kill()
    assert list(_answers(run)) == [0]
    server = Server(run, cache)
    try:
        _, q = server.post("/api/next", {"client": client})
        assert q["order"] == 1 and q["answered"] == 1  # continues at the first unanswered query
        status, body = server.post("/api/answer", {"client": client, "round": 1, "order": 0, "classes": [3]})
        assert status == 409 and "already answered" in body["error"]
        assert server.post("/api/answer", {"client": client, "round": 1, "order": 1, "classes": [4]})[0] == 200
    finally:
        server.kill()
    got = _answers(run)
    assert {k: a["classes"] for k, a in got.items()} == {0: [2], 1: [4]}
    assert not list((run / "answers" / "round_01").glob(".tmp-*"))


def test_full_round_in_the_browser_then_rerun_trains_on_the_answers(template_run, tmp_path, browser):
    src, cache = template_run
    run = copy_run(src, tmp_path / "run")
    server = Server(run, cache, "--annotator", "tester")
    keys = "1234567890abcdefghij"
    t0 = time.time()
    try:
        browser.get(server.url)
        for k in range(20):
            _wait_query(browser, k)
            picks = sorted({k % 19, (3 * k) % 20}) if k % 4 else [k % 19]
            _keys(browser, *[keys[c] for c in picks], Keys.ENTER)
        _wait_text(browser, "message", r"Round 1 is complete")
        elapsed = time.time() - t0
    finally:
        server.kill()
    got = _answers(run)
    assert sorted(got) == list(range(20))
    clicks = sum(len(a["classes"]) for a in got.values())
    print(f"\nbrowser: 20 queries, {clicks} clicks answered in {elapsed:.1f}s "
          f"({elapsed / 20:.2f}s per query incl. picture loads)")
    assert all(a["annotator"] == "tester" for a in got.values())

    r = start_human_run(run, cache)
    assert r.returncode == 3, r.stderr[-3000:]  # trained round 1, then waits for round 2's answers
    assert "round 2: wrote" in r.stderr
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    assert len(rounds) == 1
    m = rounds[0]
    assert m["clicks"] == clicks and m["planned_clicks"] == pytest.approx(30.0)
    assert m["annotation_seconds"] == pytest.approx(sum(a["seconds"] for a in got.values()))
    assert m["seconds_per_click"] == pytest.approx(m["annotation_seconds"] / clicks)
    assert 0 <= m["miou"] <= 1
    sel = json.loads((run / "selections" / "round_01.json").read_text())
    assert [(e["region"], e["classes"]) for e in sel["regions"]] == \
        [(json.loads((run / "queries" / "round_01.json").read_text())["queries"][k]["region"], got[k]["classes"])
         for k in range(20)]
    # round 2 plans with the mean classes per answered region of round 1
    q2 = json.loads((run / "queries" / "round_02.json").read_text())
    assert q2["expected_classes_per_region"] == pytest.approx(clicks / 20)
    assert q2["num_queries"] == int(-(-30 // (clicks / 20)))  # ceil(budget / expected)


def test_two_browsers_get_different_queries(template_run, tmp_path, browser):
    src, cache = template_run
    run = copy_run(src, tmp_path / "run")
    server = Server(run, cache)
    other = _chromium(tmp_path / "profile2")
    try:
        browser.get(server.url)
        _wait_query(browser, 0)
        other.get(server.url)
        _wait_query(other, 1)  # query 1 is open in the first browser
        _keys(other, "3", Keys.ENTER)
        _wait_query(other, 2)
        _keys(browser, "1", Keys.ENTER)
        _wait_query(browser, 3)  # 1 answered, 2 open in the other browser
        got = _answers(run)
        assert {k: a["classes"] for k, a in got.items()} == {0: [0], 1: [2]}
        assert got[0]["client"] != got[1]["client"]
    finally:
        other.quit()
        server.kill()


def test_folder_dataset_page_shows_its_own_class_names_and_colours(tmp_path, browser):
    from _folder_data import CLASSES, make_folder_dataset
    from _tiny_run import cli

    root = make_folder_dataset(tmp_path / "data", train=4, val=2, train_masks=False)
    run, cache = tmp_path / "run", tmp_path / "cache"
    r = cli(["--dataset", "folder", "--data-root", str(root), "--run-dir", str(run), "--oracle", "human",
             "--region-size", "16", "--rounds", "1", "--budget", "12", "--iterations", "2", "--batch-size", "2",
             "--crop-size", "48", "--encoder", "resnet18", "--encoder-weights", "null", "--decoder-channels", "16",
             "--num-workers", "0", "--eval-interval", "0"], cache)
    assert r.returncode == 3, r.stderr[-3000:]
    total = len(json.loads((run / "queries" / "round_01.json").read_text())["queries"])
    server = Server(run, cache)
    try:
        browser.get(server.url)
        _wait_query(browser, 0, total)
        buttons = browser.find_elements(By.CSS_SELECTOR, ".cls")
        assert [b.find_element(By.CSS_SELECTOR, ".label").text for b in buttons] == \
            [n for n, _ in CLASSES] + ["other / none of these"]
        swatches = [b.find_element(By.CSS_SELECTOR, ".swatch").value_of_css_property("background-color")
                    for b in buttons[:len(CLASSES)]]
        assert swatches == [f"rgba({r}, {g}, {b}, 1)" for _, (r, g, b) in CLASSES]
        # "other" is hatched: no class colour (a grey sky) can look like it
        other = buttons[-1].find_element(By.CSS_SELECTOR, ".swatch")
        assert "repeating-linear-gradient" in other.value_of_css_property("background-image")
    finally:
        server.kill()
