"""Human-mode rounds on a real dataset, answered through the labeling page in a real browser.

    python benchmarks/camvid_human_round.py CAMVID_FOLDER WORK --out RESULTS [--rounds 2] [--budget 40]

``CAMVID_FOLDER`` is a folder dataset with train masks, e.g. CamVid converted by
``benchmarks/convert_camvid.py``. What it does:

1. copies ``--train-images`` train images and ``--val-images`` val images with their masks,
   evenly spaced over each split's sorted names (CamVid's splits are video sequences in order:
   the first images alone would all be one dusk sequence), and ``classes.yaml`` to
   ``WORK/data``, **without the train masks**, so ``--oracle human`` is the only way the run
   can learn a train label (the subsets are listed in ``WORK/data/splits/``);
2. runs ``mulact-train --dataset folder --oracle human`` on the copy (run directory
   ``WORK/run``), which stops after each round's acquisition (exit status 3);
3. starts ``mulact-label WORK/run`` and answers every query of the round on the page, in
   headless Chromium driven by selenium: it reads the image name and region number the page
   shows, clicks the buttons whose labels name the region's classes, and clicks *Submit*;
4. runs ``mulact-train`` again, which trains the round on the answers, evaluates on the val
   masks and (if rounds remain) writes the next round's queries; steps 3-4 repeat;
5. writes to ``RESULTS``: ``human_rounds.md`` (per round: queries, clicks, the seconds per query
   and per click the run recorded, mIoU), ``human_answers.csv`` (every answer as saved),
   the run's ``metrics.csv`` and ``config.yaml`` (``WORK`` in place of this machine's paths),
   and screenshots of the page.

The "person" looks each answer up in the original train masks (``CAMVID_FOLDER/masks/train/``)
with the rule the simulated oracle applies (:func:`mulact.ops.region_labels_from_mask`: every
class in the region after the run's ``--trim`` of superpixel boundaries; a region of void
pixels only is *other / none of these*), so its answers are those a careful annotator following
the protocol would give. The answers reach the run only through the page's buttons. The seconds
per query are therefore those of a script in a browser (page round trips and picture loads), not
of a person: a lower bound on the time the page itself costs.

Options after ``--`` go to ``mulact-train`` unchanged (they override the small defaults here).
Needs Debian's ``chromium`` and ``chromium-driver`` (or ``--chromium``/``--chromedriver``) and the
``selenium`` package.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Small settings: a CPU finishes a round of the quarter-size CamVid (90x120) in minutes.
DEFAULT_TRAIN = ["--preset", "demo", "--region-size", "8", "--iterations", "40", "--batch-size", "4", "--crop-size", "80", "--decoder-channels", "32",
                 "--eval-batch-size", "4", "--no-stage2", "--seed", "0"]
WAITING = 3  # mulact-train's exit status while a round waits for answers


def evenly_spaced(stems: list[str], n: int) -> list[str]:
    """``n`` of ``stems`` (all when ``n`` is 0 or more than there are), spread over the list."""
    if n <= 0 or n >= len(stems):
        return list(stems)
    return [stems[int(k * len(stems) / n)] for k in range(n)]


def copy_without_train_masks(src: Path, dst: Path, train_images: int, val_images: int) -> Path:
    """A subset of ``src`` in ``dst``: train images (no masks), val images and masks, the class file."""
    from mulact.data.folder import FolderDataset

    if not (src / "masks" / "train").is_dir():
        raise SystemExit(f"CAMVID_FOLDER: {src} has no masks/train/: the stand-in annotator looks answers up there")
    if dst.exists():
        if (dst / "masks" / "train").exists():
            raise SystemExit(f"WORK: {dst} holds train masks; use an empty WORK directory")
        return dst  # a rerun continues with the copy it made
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "splits").mkdir(parents=True)
    shutil.copy2(src / "classes.yaml", tmp / "classes.yaml")
    splits = [("train", train_images, False)] + ([("val", val_images, True)] if (src / "images" / "val").is_dir() else [])
    for split, n, with_masks in splits:
        ds = FolderDataset(src, split)  # checks the layout and names the file of a problem
        chosen = set(evenly_spaced(ds.names(), n))
        for sample in ds.samples:
            if sample.name not in chosen:
                continue
            files = [(sample.image, tmp / "images" / split / sample.image.relative_to(src / "images" / split))]
            if with_masks and sample.label is not None:
                files.append((sample.label, tmp / "masks" / split / f"{sample.name}.png"))
            for a, b in files:
                b.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(a, b)
        names = [x for x in ds.names() if x in chosen]
        (tmp / "splits" / f"{split}.txt").write_text("".join(f"{x}\n" for x in names))
    tmp.rename(dst)
    return dst


def train(cmd: list[str], log: Path) -> int:
    """One ``mulact-train`` call; its output appended to ``log``; exit status 0 or 3 expected."""
    t0 = time.time()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
    print(f"mulact-train: exit status {rc} after {time.time() - t0:.0f} s (output in {log})", flush=True)
    if rc not in (0, WAITING):
        raise SystemExit(f"mulact-train failed with status {rc}; see {log}")
    return rc


class LabelServer:
    """``mulact-label RUN_DIR --port 0`` in a subprocess (its request log in ``log``); ``url`` as
    it printed it."""

    def __init__(self, run: Path, annotator: str, log: Path):
        self.log = open(log, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "mulact.label.cli", str(run), "--port", "0",
                                      "--annotator", annotator], stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.url = None
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit(f"mulact-label exited with status {self.proc.wait()} before serving; see {log}")
            m = re.search(r"open (http://\S+)", line)
            if m:
                self.url = m.group(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.log.close()


def browser(chromium: str, chromedriver: str, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    for path, what in ((chromium, "--chromium"), (chromedriver, "--chromedriver")):
        if not os.path.exists(path):
            raise SystemExit(f"{what}: {path} does not exist (install Debian's chromium and chromium-driver)")
    opts = Options()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,900", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


class StandIn:
    """The annotator: the classes of a region, looked up in the original masks with the
    simulated oracle's rule (the run's trim)."""

    def __init__(self, run: Path, original: Path):
        from mulact.al.data import build_split
        from mulact.data.folder import FolderDataset
        from mulact.runstore import RunDir

        self.cfg = RunDir.existing(run, what="WORK/run").read_train_config()
        self.dataset = build_split(self.cfg, "train")  # the images and superpixels the page shows
        self.index = {name: i for i, name in enumerate(self.dataset.names())}
        self.truth = FolderDataset(original, "train")  # only its masks are read
        self.truth_index = {name: i for i, name in enumerate(self.truth.names())}
        self.class_names = list(self.dataset.class_names)

    def answer(self, name: str, region: int) -> list[str]:
        import torch

        from mulact.ops import region_labels_from_mask

        regions = np.asarray(self.dataset.load_regions(self.index[name]), dtype=np.int32)
        gt = self.truth.load_label(self.truth_index[name])
        if gt.shape != regions.shape:
            raise SystemExit(f"CAMVID_FOLDER: the mask of {name} is {gt.shape} but the page's image is {regions.shape}")
        labels = region_labels_from_mask(torch.from_numpy(gt)[None], torch.from_numpy(regions)[None],
                                         self.dataset.num_regions(self.index[name]), len(self.class_names),
                                         ignore_index=self.truth.ignore_index, trim=self.cfg.trim)
        if self.cfg.labeling == "dominant":
            picked = [int(labels.dominant[0, region])]
        else:
            picked = torch.nonzero(labels.multi_hot[0, region]).flatten().tolist()
        return [self.class_names[c] if c < len(self.class_names) else "other / none of these" for c in picked]


def answer_round(driver, url: str, person: StandIn, shots: Path, num_shots: int, t: int) -> dict:
    """Every query of the open round, through the page; returns what was clicked."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def progress():
        return driver.find_element(By.ID, "progress").text

    driver.get(url)
    clicked = {}
    while True:
        WebDriverWait(driver, 120).until(
            lambda d: re.search(r"query \d+ of \d+", progress()) or "complete" in d.find_element(By.ID, "message").text)
        m = re.search(r"query (\d+) of (\d+)", progress())
        if m is None:
            break
        order, total = int(m.group(1)) - 1, int(m.group(2))
        WebDriverWait(driver, 120).until(lambda d: d.execute_script(
            "return ['crop', 'full'].every(id => { const i = document.getElementById(id); "
            "return i.complete && i.naturalWidth > 0; })"))
        name, region = re.fullmatch(r"(.+) · region (\d+)", driver.find_element(By.ID, "name").text).groups()
        want = person.answer(name, int(region))
        buttons = {b.find_element(By.CSS_SELECTOR, ".label").text: b
                   for b in driver.find_elements(By.CSS_SELECTOR, ".cls")}
        for cls in want:
            buttons[cls].click()
        if len(want) >= 2 and num_shots > 0:
            driver.save_screenshot(str(shots / f"page_round{t}_query{order + 1}.png"))
            num_shots -= 1
        driver.find_element(By.ID, "submit").click()
        clicked[order] = want
        WebDriverWait(driver, 120).until(
            lambda d: f"query {order + 1} of" not in progress() or "complete" in d.find_element(By.ID, "message").text)
        print(f"  round {t}: query {order + 1}/{total} {name} region {region}: {', '.join(want)}", flush=True)
    return clicked


def table(run: Path) -> str:
    """The answered rounds as the run recorded them (``metrics.json``; queries per round from
    ``queries/round_XX.json``)."""
    metrics = json.loads((run / "metrics.json").read_text())["rounds"]
    lines = ["| round | acquisition | queries | planned clicks | clicks | classes / query | labeled regions "
             "| annotation s | s / query | s / click | mIoU (%) | stage-1 s |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in metrics:
        queries = json.loads((run / "queries" / f"round_{m['round']:02d}.json").read_text())["num_queries"]
        miou = "n/a" if m.get("miou") is None else f"{100 * m['miou']:.2f}"
        lines.append(f"| {m['round']} | {m['acquisition']} | {queries} | {m['planned_clicks']:.1f} | {m['clicks']} | "
                     f"{m['clicks'] / queries:.2f} | {m['labeled_regions']} | {m['annotation_seconds']:.1f} | "
                     f"{m['seconds_per_query']:.2f} | {m['seconds_per_click']:.2f} | {miou} | "
                     f"{m['stage1_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def answers_csv(run: Path) -> str:
    """One line per answered query: round, query, image, region, classes, seconds (as saved)."""
    import csv
    import io

    names = json.loads((run / "metrics.json").read_text())["class_names"] + ["other / none of these"]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["round", "query", "image", "region", "classes", "seconds"])
    for path in sorted((run / "answers").glob("round_*/q_*.json")):
        a = json.loads(path.read_text())
        query = json.loads((run / "queries" / f"round_{a['round']:02d}.json").read_text())["queries"][a["order"]]
        w.writerow([a["round"], a["order"] + 1, query["name"], a["region"], "; ".join(names[c] for c in a["classes"]),
                    f"{a['seconds']:.2f}"])
    return out.getvalue()


def main(argv=None) -> int:
    from mulact.al.answers import QueryStore
    from mulact.runstore import RunDir

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, metavar="CAMVID_FOLDER", help="folder dataset with masks/train/")
    p.add_argument("work", type=Path, metavar="WORK", help="where the mask-less copy and the run go")
    p.add_argument("--out", type=Path, required=True, help="directory for the table, metrics and screenshots")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--budget", type=int, default=40, help="clicks per round")
    p.add_argument("--train-images", type=int, default=24, help="train images, evenly spaced (0: all)")
    p.add_argument("--val-images", type=int, default=16, help="val images, evenly spaced (0: all)")
    p.add_argument("--screenshots", type=int, default=2,
                   help="photograph the page (answer selected, before Submit) at this many round-1 queries: "
                        "the first ones answered with two or more classes")
    p.add_argument("--annotator", default="camvid-stand-in")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args(argv)

    data = copy_without_train_masks(args.data.resolve(), (args.work / "data").resolve(), args.train_images,
                                    args.val_images)
    run = (args.work / "run").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mulact.cli", "--dataset", "folder", "--data-root", str(data), "--oracle", "human",
           "--run-dir", str(run), "--rounds", str(args.rounds), "--budget", str(args.budget), *DEFAULT_TRAIN, *extra]
    log = args.work / "train.log"
    while train(cmd, log) == WAITING:
        person = StandIn(run, args.data.resolve())
        t = QueryStore(RunDir.existing(run, what="WORK/run")).open_round()
        server = LabelServer(run, args.annotator, args.work / "label.log")
        driver = browser(args.chromium, args.chromedriver, args.work / "chromium-profile")
        try:
            t0 = time.time()
            shots = args.screenshots if t == 1 else 0
            clicked = answer_round(driver, server.url, person, args.out, shots, t)
            print(f"round {t}: {len(clicked)} queries answered through the page in {time.time() - t0:.1f} s",
                  flush=True)
        finally:
            driver.quit()
            server.stop()
    text = table(run)
    (args.out / "human_rounds.md").write_text(text)
    (args.out / "human_answers.csv").write_text(answers_csv(run))
    shutil.copy2(run / "metrics.csv", args.out / "human_metrics.csv")
    # the configuration without this machine's paths
    config = (run / "config.yaml").read_text().replace(str(run), "WORK/run").replace(str(data), "WORK/data")
    (args.out / "human_config.yaml").write_text(config)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
