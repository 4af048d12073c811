"""The full-supervision reference (`--labeling full`, `--reference`) and the paper's Table 1
figure: the clicks to reach 95 % of it, in a run's metrics and in a sweep's report."""
import json
import math
import os

import pytest
import yaml
from _tiny_run import TINY, cli

from mulact.al.reference import clicks_to_fraction, reference_config, reference_dir
from mulact.config import resolve_config


def _rec(t, clicks, miou, pct=None):
    return {"round": t, "cumulative_clicks": clicks, "miou": miou,
            "percent_full_cost": pct if pct is not None else clicks / 10}


@pytest.mark.parametrize("rounds, ref, expect", [
    # reached between rounds 2 and 3: 95 % of 0.6 = 0.57, a quarter of the way from 0.55 to 0.63
    ([_rec(1, 100, 0.40), _rec(2, 200, 0.55), _rec(3, 300, 0.63)], 0.60,
     {"reached": True, "round": 3, "bound": "interpolated", "clicks": 225.0, "percent_full_cost": 22.5}),
    # exactly on a round's mIoU
    ([_rec(1, 100, 0.40), _rec(2, 200, 0.57)], 0.60, {"reached": True, "round": 2, "clicks": 200.0}),
    # already in round 1: round 1's clicks are an upper bound
    ([_rec(1, 100, 0.59), _rec(2, 200, 0.70)], 0.60, {"reached": True, "round": 1, "bound": "at most",
                                                     "clicks": 100.0}),
    # never reached, including a later drop below the target
    ([_rec(1, 100, 0.40), _rec(2, 200, 0.56), _rec(3, 300, 0.50)], 0.60, {"reached": False}),
    ([_rec(1, 100, 0.40)], None, {"reached": False, "reason": "no reference mIoU"}),
    ([_rec(1, 100, None)], 0.60, {"reached": False, "reason": "mIoU not measured"}),
])
def test_clicks_to_95_percent(rounds, ref, expect):
    got = clicks_to_fraction(rounds, ref, 0.95)
    for k, v in expect.items():
        assert got[k] == (pytest.approx(v) if isinstance(v, float) else v), (k, got)


def test_clicks_to_fraction_interpolates_monotonically():
    # a finer target needs more clicks; the interpolation never leaves the bracketing rounds
    rounds = [_rec(1, 100, 0.30), _rec(2, 250, 0.45), _rec(3, 400, 0.62), _rec(4, 550, 0.70)]
    last = 0
    for f in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        got = clicks_to_fraction(rounds, 0.72, f)
        assert got["reached"], f
        assert last <= got["clicks"] <= 550
        last = got["clicks"]


def test_reference_is_shared_by_configurations_that_differ_only_in_the_rounds(tmp_path, monkeypatch):
    monkeypatch.setenv("MULACT_CACHE", str(tmp_path))

    def cfg(**kw):
        return resolve_config("demo", None, {"run_dir": str(tmp_path / "r"), **kw})

    a, b = cfg(acquisition="bvsb", budget=50, stage2=True), cfg(labeling="dominant", loss="dominant", rounds=7)
    assert reference_dir(a) == reference_dir(b)
    assert reference_dir(cfg(seed=1)) != reference_dir(a)  # the seed's initial weights and batch stream
    assert reference_dir(cfg(iterations=121)) != reference_dir(a)
    assert reference_dir(cfg(lr=1e-3)) != reference_dir(a)
    assert reference_dir(cfg(device="cpu", num_workers=2)) == reference_dir(a)  # runtime options

    ref = reference_config(a)
    assert (ref.labeling, ref.rounds, ref.stage2, ref.reference, ref.run_dir) == (
        "full", 1, False, "off", reference_dir(a))
    assert ref.to_dict() == reference_config(b).to_dict()


def test_reference_cache_is_keyed_by_training_revision(tmp_path, monkeypatch):
    # a reference trained by code that trained differently must not be reused
    import mulact.al.reference as reference

    monkeypatch.setenv("MULACT_CACHE", str(tmp_path))
    cfg = resolve_config("demo", None, {"run_dir": str(tmp_path / "r")})
    a = reference_dir(cfg)
    monkeypatch.setattr(reference, "TRAINING_REVISION", reference.TRAINING_REVISION + 1)
    assert reference_dir(cfg) != a and os.path.dirname(reference_dir(cfg)) == os.path.dirname(a)


def _args(run, *extra):
    args = [a for a in TINY]
    args[args.index("--rounds") + 1] = "2"
    return [*args, "--no-stage2", "--run-dir", str(run), *extra]


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_full_supervision_run_and_reference_by_path(tmp_path):
    cache = tmp_path / "cache"
    full = tmp_path / "full"
    rc = cli(_args(full, "--labeling", "full"), cache)
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert "full supervision (every pixel of the train split)" in rc.stdout
    doc = _metrics(full)
    (rec,) = doc["rounds"]
    assert rec["percent_full_cost"] == 100.0 and rec["clicks"] == rec["full_annotation_cost"] > 0
    assert rec["labeled_images"] == 6 and rec["miou"] == rec["stage1_miou"] and 0 <= rec["miou"] <= 1
    assert (full / "round_01" / "stage1.pt").exists() and (full / "model_smp.pt").exists()
    assert not (full / "pool.npz").exists()  # nothing was selected
    stamp = (full / "round_01" / "stage1.pt").stat().st_mtime_ns
    rc = cli(_args(full, "--labeling", "full"), cache)  # a rerun trains nothing
    assert rc.returncode == 0 and (full / "round_01" / "stage1.pt").stat().st_mtime_ns == stamp

    run = tmp_path / "run"
    rc = cli(_args(run), cache)
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert "reference" not in _metrics(run)
    before = {p.name: p.stat().st_mtime_ns for p in (run / "round_02").iterdir()}
    # a finished run takes a reference on a rerun without training anything again
    rc = cli(_args(run, "--reference", str(full)), cache)
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "round_02").iterdir()} == before
    doc = _metrics(run)
    ref = rec["miou"]
    assert doc["reference"]["miou"] == ref and doc["reference"]["run_dir"] == str(full)
    for m in doc["rounds"]:
        assert m["reference_miou"] == ref
        assert m["percent_of_reference"] == pytest.approx(100 * m["miou"] / ref)
    assert doc["clicks_to_95"] == json.loads(json.dumps(clicks_to_fraction(doc["rounds"], ref, 0.95)))
    assert "% ref" in rc.stdout and "clicks to 95 % of it" in rc.stdout
    assert "percent_of_reference" in (run / "metrics.csv").read_text().splitlines()[0]
    # and drops it again with --reference off
    rc = cli(_args(run), cache)
    assert rc.returncode == 0 and "reference" not in _metrics(run)
    assert all("percent_of_reference" not in m for m in _metrics(run)["rounds"])

    # a reference trained under other stage-1 options is refused, naming the option
    rc = cli(_args(tmp_path / "other", "--reference", str(full), "--lr", "0.01"), cache)
    assert rc.returncode == 1 and "--reference" in rc.stderr and "lr" in rc.stderr, rc.stderr[-2000:]
    rc = cli(_args(tmp_path / "other", "--reference", str(run)), cache)  # not a --labeling full run
    assert rc.returncode == 1 and "--labeling multi run" in rc.stderr, rc.stderr[-2000:]


def test_reference_auto_is_trained_once(tmp_path):
    cache = tmp_path / "cache"
    a, b = tmp_path / "a", tmp_path / "b"
    rc = cli(_args(a, "--reference", "auto"), cache)
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert "training the full-supervision reference" in rc.stdout
    (ref_dir,) = (cache / "references").iterdir()
    stamp = (ref_dir / "round_01" / "stage1.pt").stat().st_mtime_ns
    assert yaml.safe_load((ref_dir / "config.yaml").read_text())["labeling"] == "full"
    rc = cli(_args(b, "--reference", "auto", "--acquisition", "bvsb", "--budget", "30"), cache)
    assert rc.returncode == 0, rc.stderr[-3000:]
    assert "training the full-supervision reference" not in rc.stdout
    assert (ref_dir / "round_01" / "stage1.pt").stat().st_mtime_ns == stamp
    ra, rb = _metrics(a)["reference"], _metrics(b)["reference"]
    assert ra == rb and ra["run_dir"] == str(ref_dir) and math.isfinite(ra["miou"])
    # the reference equals a --labeling full run of the same options
    full = tmp_path / "full"
    assert cli(_args(full, "--labeling", "full"), cache).returncode == 0
    assert _metrics(full)["rounds"][0]["miou"] == ra["miou"]


@pytest.mark.parametrize("extra, message", [
    (["--labeling", "full", "--oracle", "human"], "--labeling full: trains on the train split's masks"),
    (["--labeling", "full", "--reference", "auto"], "a --labeling full run is itself the reference"),
    (["--reference", "nowhere"], "--reference 'nowhere': expected 'off', 'auto' or the directory"),
])
def test_bad_reference_options(tmp_path, extra, message):
    rc = cli(_args(tmp_path / "r", *extra), tmp_path / "cache")
    assert rc.returncode != 0 and message in rc.stderr, rc.stderr[-2000:]
    assert not (tmp_path / "r").exists()


def test_sweep_report_gives_percent_of_reference_and_clicks_to_95(tmp_path):
    """A sweep directory written by hand (two variants, three seeds, a reference per seed):
    the report's Table 1 section and its per-round % of full supervision."""
    from mulact.runstore import RunDir
    from mulact.sweep.report import write_report

    sweep = {"name": "t", "preset": "demo", "base": {"rounds": 2}, "seeds": [0, 1, 2], "baseline": "a",
             "variants": {"a": {"acquisition": "random"}, "b": {"acquisition": "pixbal"}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    refs = {0: 0.60, 1: 0.62, 2: 0.58}
    miou = {"a": [(0.40, 0.50), (0.42, 0.52), (0.41, 0.49)],
            "b": [(0.40, 0.58), (0.42, 0.60), (0.41, 0.57)]}  # b reaches 95 % in round 2 for every seed
    for v, per_seed in miou.items():
        for seed, (m1, m2) in enumerate(per_seed):
            run = RunDir(tmp_path / "runs" / v / f"seed_{seed}")
            (tmp_path / "runs" / v / f"seed_{seed}").mkdir(parents=True)
            run.open()
            ref = refs[seed]
            rounds = [{"round": t, "clicks": 100, "cumulative_clicks": 100 * t, "percent_full_cost": 1.0 * t,
                       "miou": m, "stage1_miou": m, "reference_miou": ref, "percent_of_reference": 100 * m / ref}
                      for t, m in ((1, m1), (2, m2))]
            run.write_json(run.metrics_json, {"class_names": ["x"], "rounds": rounds,
                                              "reference": {"miou": ref, "run_dir": "r"}})
            run.close()
    out = write_report(str(tmp_path), echo=lambda *a: None)
    md = open(f"{out}/report.md").read()
    assert "## Against full supervision" in md and "% of full supervision" in md
    row_b = next(line for line in md.splitlines() if line.startswith("| `b` | 3 |"))
    row_a = next(line for line in md.splitlines() if line.startswith("| `a` | 3 |"))
    assert "3/3" in row_b and "0/3" in row_a and "not reached" in row_a
    # b's clicks to 95 %: per seed 100 + 100 * (0.95 ref - m1) / (m2 - m1)
    want = sum(100 + 100 * (0.95 * refs[s] - miou["b"][s][0]) / (miou["b"][s][1] - miou["b"][s][0])
               for s in range(3)) / 3
    assert f"| {want:.0f} |" in row_b
    assert f"| {100 * sum(refs.values()) / 3:.2f} |" in row_b  # mean reference mIoU in percent


def test_reference_auto_waits_for_another_process_training_it(tmp_path, monkeypatch):
    """A second run asking for a reference that another process is training waits for it
    (the reference's run directory is locked) and then reads the finished reference."""
    import mulact.al.loop as loop
    import mulact.al.reference as reference
    from mulact.runstore import LockedError

    monkeypatch.setenv("MULACT_CACHE", str(tmp_path))
    cfg = resolve_config("demo", None, {"run_dir": str(tmp_path / "r"), "reference": "auto"})
    calls, reads, said = [], [], []

    def fake_run(ref, echo):
        calls.append(ref.run_dir)
        if len(calls) == 1:
            raise LockedError(f"run directory {ref.run_dir} is in use by pid 1")
        return []

    def fake_read(root, what="--reference"):
        reads.append(root)
        if len(reads) == 1:
            raise FileNotFoundError(root)  # not there before training
        return {"miou": 0.5, "run_dir": root}

    monkeypatch.setattr(loop, "run_experiment", fake_run)
    monkeypatch.setattr(reference, "read_reference", fake_read)
    got = reference.reference_of(cfg, echo=lambda *a, **k: said.append(" ".join(map(str, a))), poll_s=0)
    assert got == {"miou": 0.5, "run_dir": reference_dir(cfg)}
    assert calls == [reference_dir(cfg)] * 2 and reads == [reference_dir(cfg)] * 2
    assert any("in use by pid 1" in s and "waiting" in s for s in said)
    assert reference.reference_of(resolve_config("demo", None, {"run_dir": str(tmp_path / "r")})) is None
