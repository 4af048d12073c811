"""End to end on a tiny sweep (2 variants x 2 seeds, tiny settings): a killed sweep resumes,
finished runs are skipped, shared work equals what an unshared run computes, and the report
holds the right statistics."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from _tiny_run import TINY, cli, env_for
from scipy import stats

# TINY as a mapping of options, shortened to 2 rounds of 4 iterations.
_OPTS = {TINY[i].lstrip("-").replace("-", "_"): TINY[i + 1] for i in range(0, len(TINY), 2)}
BASE = {**_OPTS, "rounds": 2, "iterations": 4, "checkpoint_interval": 1, "stage2_iterations": 2}
SWEEP = {"name": "tiny", "preset": "demo", "base": BASE, "seeds": [0, 1], "baseline": "s1",
         "variants": {"s1": {"stage2": False}, "s2": {"stage2": True}}}


def _sweep_cmd(path, sweep_dir, *extra):
    return [sys.executable, "-m", "mulact.sweep.cli", str(path), "--dir", str(sweep_dir), "--jobs", "2",
            "--threads", "1", *extra]


def _finished(run):
    p = run / "metrics.json"
    return p.exists() and len(json.loads(p.read_text())["rounds"]) == 2


def _workers_of(sweep_dir):
    """Processes whose command line names a job of this sweep."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if str(sweep_dir).encode() in cmdline and b"mulact.sweep.worker" in cmdline:
            found.append(int(pid))
    return found


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Run the sweep, SIGKILL it once the first run has finished, then rerun it to the end."""
    tmp = tmp_path_factory.mktemp("sweep")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    sweep_dir = tmp / "out"
    runs = [sweep_dir / "runs" / v / f"seed_{s}" for v in ("s1", "s2") for s in (0, 1)]
    proc = subprocess.Popen(_sweep_cmd(path, sweep_dir), env=env_for(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not any(_finished(r) for r in runs):
        assert proc.poll() is None, f"sweep ended early:\n{proc.stdout.read()}"
        assert time.time() - t0 < 600, "timed out waiting for the first finished run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    done_before = [r for r in runs if _finished(r)]
    mtimes = {r: (r / "metrics.json").stat().st_mtime_ns for r in done_before}
    t0 = time.time()
    while _workers_of(sweep_dir) and time.time() - t0 < 10:
        time.sleep(0.1)
    orphans = _workers_of(sweep_dir)
    second = subprocess.run(_sweep_cmd(path, sweep_dir), env=env_for(tmp), capture_output=True, text=True,
                            timeout=900)
    return dict(tmp=tmp, path=path, dir=sweep_dir, runs=runs, done_before=done_before, mtimes=mtimes,
                orphans=orphans, second=second)


def test_killed_sweep_resumes_and_skips_finished_runs(swept):
    assert swept["orphans"] == [], "runs kept going after the sweep process was killed"
    r = swept["second"]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 1 <= len(swept["done_before"]) < 4, "the kill must land between runs"
    assert f"({len(swept['done_before'])} finished, skipped)" in r.stdout
    for run in swept["runs"]:
        assert _finished(run)
    for run in swept["done_before"]:
        assert (run / "metrics.json").stat().st_mtime_ns == swept["mtimes"][run]  # not run again
        log = swept["dir"] / "logs" / f"{run.parent.name}-{run.name}.log"
        assert log.read_text().count("=== mulact-sweep: start") == 1
    starts = [p.read_text().count("=== mulact-sweep: start") for p in (swept["dir"] / "logs").glob("*.log")]
    assert 2 in starts, "no run was interrupted and continued"
    assert not list((swept["dir"] / "runs").glob("*/.seeding-*"))


def test_rerunning_a_finished_sweep_runs_nothing(swept):
    logs = {p: p.read_text() for p in (swept["dir"] / "logs").glob("*.log")}
    r = subprocess.run(_sweep_cmd(swept["path"], swept["dir"]), env=env_for(swept["tmp"]), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "(4 finished, skipped)" in r.stdout and "start" not in r.stdout.replace("(", "")
    assert {p: p.read_text() for p in logs} == logs


def test_shared_run_equals_an_unshared_run(swept):
    shared = json.loads((swept["dir"] / "shared.json").read_text())
    # s2 differs from s1 only in stage 2: it received s1's round 1 of the same seed.
    for seed in (0, 1):
        assert shared[f"s2-seed_{seed}"] == {"oracle": f"runs/s1/seed_{seed}", "round1_stage1": f"runs/s1/seed_{seed}"}
    assert "oracle" in shared["s1-seed_1"] or "oracle" in shared["s1-seed_0"]
    # The loop used the shared files as they were: it did not compute the oracle again, and the
    # round-1 stage-1 summary (with its training time) is the donor's.
    logs = {p.name: p.read_text() for p in (swept["dir"] / "logs").glob("*.log")}
    computed = [name for name, text in logs.items() if "computing superpixels and oracle labels" in text]
    assert len(computed) == 1, computed
    for seed in (0, 1):
        donor = json.loads((swept["dir"] / "runs" / "s1" / f"seed_{seed}" / "metrics.json").read_text())["rounds"]
        taker = json.loads((swept["dir"] / "runs" / "s2" / f"seed_{seed}" / "metrics.json").read_text())["rounds"]
        assert taker[0]["stage1_seconds"] == donor[0]["stage1_seconds"]
        assert taker[0]["stage1_miou"] == donor[0]["stage1_miou"]
    # The reference computes everything itself, in a directory of its own.
    ref = swept["tmp"] / "reference"
    flags = []
    for k, v in {**BASE, "stage2": True, "seed": 0}.items():
        flags += [f"--{k.replace('_', '-')}"] if v is True else [f"--{k.replace('_', '-')}", str(v)]
    r = cli(["--run-dir", str(ref), *flags], swept["tmp"])
    assert r.returncode == 0, r.stderr[-3000:]
    run = swept["dir"] / "runs" / "s2" / "seed_0"
    for t in (1, 2):
        a = json.loads((ref / "selections" / f"round_{t:02d}.json").read_text())["regions"]
        b = json.loads((run / "selections" / f"round_{t:02d}.json").read_text())["regions"]
        assert [(x["image"], x["region"], x["classes"]) for x in a] == [(x["image"], x["region"], x["classes"]) for x in b]
    ma = json.loads((ref / "metrics.json").read_text())["rounds"]
    mb = json.loads((run / "metrics.json").read_text())["rounds"]
    for key in ("stage1_miou", "stage2_miou", "miou", "cumulative_clicks"):
        assert [m[key] for m in ma] == [m[key] for m in mb], key
    with np.load(ref / "oracle.npz") as za, np.load(run / "oracle.npz") as zb:
        assert all(np.array_equal(za[k], zb[k]) for k in za.files)


def _read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_report_statistics_of_the_tiny_sweep(swept):
    rep = swept["dir"] / "report"
    metrics = {(v, s): json.loads((swept["dir"] / "runs" / v / f"seed_{s}" / "metrics.json").read_text())["rounds"]
               for v in ("s1", "s2") for s in (0, 1)}
    rows = _read_csv(rep / "rounds.csv")
    assert [(r["variant"], r["round"]) for r in rows] == [("s1", "1"), ("s1", "2"), ("s2", "1"), ("s2", "2")]
    for r in rows:
        x = np.array([100 * metrics[(r["variant"], s)][int(r["round"]) - 1]["miou"] for s in (0, 1)])
        assert int(r["n"]) == 2
        assert float(r["miou_mean"]) == pytest.approx(x.mean(), abs=1e-4)
        assert float(r["miou_std"]) == pytest.approx(x.std(ddof=1), abs=1e-4)
        if x.std() > 0:
            lo, hi = stats.t.interval(0.95, 1, loc=x.mean(), scale=stats.sem(x))
            assert (float(r["miou_ci_low"]), float(r["miou_ci_high"])) == (pytest.approx(lo, abs=1e-3),
                                                                             pytest.approx(hi, abs=1e-3))
    paired = {(r["round"], r["metric"]): r for r in _read_csv(rep / "paired.csv")}
    for t in (1, 2):
        d = [100 * (metrics[("s2", s)][t - 1]["miou"] - metrics[("s1", s)][t - 1]["miou"]) for s in (0, 1)]
        p = paired[(str(t), "miou")]
        assert p["variant"] == "s2" and p["baseline"] == "s1" and int(p["n"]) == 2
        assert float(p["mean_difference"]) == pytest.approx(np.mean(d), abs=1e-4)
    # Round 1 up to stage 1 is shared, so the paired stage-1 difference of round 1 is exactly 0.
    assert float(paired[("1", "stage1_miou")]["mean_difference"]) == 0.0
    assert len(_read_csv(rep / "runs.csv")) == 8
    md = (rep / "report.md").read_text()
    assert "Runs complete: 4/4" in md and "| `s2` | 2 |" in md and "Paired differences against `s1`" in md
    assert (rep / "miou_vs_clicks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # `mulact-sweep report DIR` rewrites the same tables.
    before = (rep / "rounds.csv").read_text()
    (rep / "rounds.csv").unlink()
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", "report", str(swept["dir"])], capture_output=True,
                       text=True, timeout=300, env=env_for(swept["tmp"]))
    assert r.returncode == 0, r.stderr
    assert (rep / "rounds.csv").read_text() == before
    # --baseline: the differences the other way round, in their own directory
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", "report", str(swept["dir"]), "--baseline", "s2"],
                       capture_output=True, text=True, timeout=300, env=env_for(swept["tmp"]))
    assert r.returncode == 0, r.stderr
    flipped = {(r["round"], r["metric"]): r for r in _read_csv(swept["dir"] / "report_vs_s2" / "paired.csv")}
    for key, p in paired.items():
        assert flipped[key]["variant"] == "s1" and flipped[key]["baseline"] == "s2"
        assert float(flipped[key]["mean_difference"]) == pytest.approx(-float(p["mean_difference"]), abs=1e-4)
    assert (rep / "rounds.csv").read_text() == before  # the main report is untouched
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", "report", str(swept["dir"]), "--baseline", "s9"],
                       capture_output=True, text=True, timeout=300, env=env_for(swept["tmp"]))
    assert r.returncode == 2 and "--baseline 's9' is not a variant" in r.stderr


def test_a_failing_run_is_reported_and_the_sweep_exits_nonzero(tmp_path):
    # Valid options that fail at run time: a Cityscapes root that exists but holds no dataset.
    (tmp_path / "empty").mkdir()
    spec = {"preset": "demo", "base": BASE, "seeds": [0],
            "variants": {"bad": {"dataset": "cityscapes", "data_root": str(tmp_path / "empty")}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    r = subprocess.run(_sweep_cmd(path, tmp_path / "out"), env=env_for(tmp_path), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 1
    assert "FAILED  bad seed 0" in r.stdout and "bad seed 0" in r.stderr
    log = (tmp_path / "out" / "logs" / "bad-seed_0.log").read_text()
    assert "leftImg8bit" in log
    assert "Runs complete: 0/1" in (tmp_path / "out" / "report" / "report.md").read_text()


def test_report_of_a_directory_that_is_no_sweep(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", "report", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "is not a sweep directory" in r.stderr and "Traceback" not in r.stderr
