"""Sweep files: validation before anything runs, built-in sweeps, and the sharing keys."""
import subprocess
import sys

import pytest

from mulact.sweep.sharing import oracle_key, round1_key
from mulact.sweep.spec import SweepFileError, builtin_sweeps, load_sweep, parse_sweep

GOOD = """
preset: demo
base: {iterations: 10}
seeds: [0, 1]
baseline: a
variants:
  a: {labeling: dominant, loss: dominant}
  b: {labeling: multi}
"""


def test_good_file_resolves_every_run():
    spec = parse_sweep(GOOD, "good.yaml")
    assert spec.name == "good" and spec.seeds == [0, 1] and list(spec.variants) == ["a", "b"]
    assert set(spec.configs) == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    cfg = spec.configs[("a", 1)]
    assert cfg["seed"] == 1 and cfg["iterations"] == 10 and cfg["labeling"] == "dominant"
    assert cfg["budget"] == 1000  # from the demo preset


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("labeling: multi", "labelling: multi"), r"variant 'b': unknown option 'labelling' \(did you mean labeling"),
    (GOOD.replace("iterations: 10", "iteratons: 10"), r"base: unknown option 'iteratons'"),
    (GOOD + "  a: {labeling: multi}\n", r"duplicate key 'a'"),
    (GOOD.replace("seeds: [0, 1]", "seeds: []"), r"seeds: expected a non-empty list"),
    (GOOD.replace("seeds: [0, 1]\n", ""), r"seeds: expected a non-empty list"),
    (GOOD.replace("seeds: [0, 1]", "seeds: [0, 0]"), r"seeds: duplicate seed"),
    (GOOD.replace("seeds: [0, 1]", "seeds: [0, one]"), r"seeds: expected a list of non-negative integers"),
    (GOOD.replace("baseline: a", "baseline: c"), r"baseline: 'c' is not a variant"),
    (GOOD.replace("labeling: multi", "acquisition: best"), r"variant 'b' \(seed 0\): --acquisition best: expected one of"),
    (GOOD.replace("labeling: multi", "seed: 3"), r"variant 'b': option 'seed' is set by the sweep"),
    (GOOD.replace("labeling: multi", "run-dir: x"), r"option 'run-dir' is set by the sweep"),
    (GOOD.replace("labeling: multi", "lambda-mp: 0, lambda_mp: 1"), r"option 'lambda_mp' given twice"),
    (GOOD.replace("labeling: multi", "{a: 1}: 2"), r"(?s)not valid YAML.*unhashable"),
    (GOOD.replace("b: {labeling: multi}", "b: {labeling: dominant, loss: dominant}"), r"'a' and 'b' resolve to the same"),
    (GOOD.replace("b: {", "b/c: {"), r"variants: name 'b/c'"),
    (GOOD.replace("preset: demo", "preset: huge"), r"--preset huge: expected one of"),
    (GOOD + "extra: 1\n", r"unknown key\(s\) \['extra'\]"),
    ("- a\n- b\n", r"expected a mapping"),
    ("variants: [\n", r"not valid YAML"),
])
def test_bad_files_are_rejected_with_the_file_and_the_reason(text, message):
    with pytest.raises(SweepFileError, match=message) as err:
        parse_sweep(text, "bad.yaml")
    assert "bad.yaml" in str(err.value)


def test_cli_rejects_a_bad_file_before_creating_anything(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("labeling: multi", "labelling: multi"))
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", str(bad), "--dir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "unknown option 'labelling'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", "no-such-sweep"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "neither a file nor a built-in sweep" in r.stderr and "labels" in r.stderr


def test_builtin_sweeps_load_and_use_real_options():
    assert set(builtin_sweeps()) >= {"labels", "acquisition", "losses", "stage2"}
    labels = load_sweep("labels")
    assert labels.configs[("dominant", 0)]["labeling"] == "dominant"
    assert labels.configs[("dominant", 0)]["loss"] == "dominant"
    assert labels.configs[("multi", 0)]["labeling"] == "multi"
    assert {labels.configs[(v, 0)]["budget"] for v in labels.variants} == {1000}  # equal clicks
    assert {labels.configs[(v, 0)]["acquisition"] for v in labels.variants} == {"pixbal"}
    acq = load_sweep("acquisition")
    assert sorted(acq.configs[(v, 0)]["acquisition"] for v in acq.variants) == ["bvsb", "classbal", "pixbal", "random"]
    losses = load_sweep("losses")
    got = {v: (c["loss"], c["lambda_mp"], c["lambda_pp"]) for (v, s), c in losses.configs.items() if s == 0}
    assert got == {"full": ("mulact", 8.0, 1.0), "no-mp": ("mulact", 0.0, 1.0), "no-pp": ("mulact", 8.0, 0.0),
                   "infimum": ("infimum", 8.0, 1.0), "rc": ("rc", 8.0, 1.0)}
    st2 = load_sweep("stage2")
    got = {v: (c["stage2"], c["expand"], c["pseudo"]) for (v, s), c in st2.configs.items() if s == 0}
    assert got["stage1"][0] is False
    assert got["localization"] == (True, False, "prototype")
    assert got["localization-expansion"] == (True, True, "prototype")
    assert got["no-prototypes"][0] is True and got["no-prototypes"][2] == "confident"
    for spec in (labels, acq, losses, st2):
        assert len(spec.seeds) >= 3


def test_sharing_keys_on_the_builtin_sweeps():
    # Oracle: one per dataset, whatever the variant or seed.
    for name in builtin_sweeps():
        spec = load_sweep(name)
        assert len({oracle_key(c) for c in spec.configs.values()}) == 1
    # Round 1 up to stage 1: the stage-2 variants and the acquisition variants share it per seed...
    for name in ("stage2", "acquisition"):
        spec = load_sweep(name)
        for seed in spec.seeds:
            assert len({round1_key(spec.configs[(v, seed)]) for v in spec.variants}) == 1
        assert len({round1_key(c) for c in spec.configs.values()}) == len(spec.seeds)
    # ...but different labels or losses change round 1, so nothing is shared there.
    losses = load_sweep("losses")
    assert len({round1_key(c) for c in losses.configs.values()}) == len(losses.configs)
    labels = load_sweep("labels")
    keys = {v: round1_key(labels.configs[(v, 0)]) for v in labels.variants}
    assert keys["multi"] == keys["multi-stage1"] != keys["dominant"]


def test_any_option_outside_the_exclusion_lists_breaks_sharing():
    spec = parse_sweep(GOOD, "good.yaml")
    cfg = spec.configs[("b", 0)]
    for option, value in (("trim", 3), ("region_size", 8), ("iterations", 11), ("lr", 1e-3), ("budget", 7),
                          ("labeling", "dominant"), ("some_future_option", 1)):
        changed = {**cfg, option: value}
        assert round1_key(changed) != round1_key(cfg), option
    for option, value in (("stage2", not cfg["stage2"]), ("expand", False), ("acquisition", "bvsb"), ("rounds", 9)):
        assert round1_key({**cfg, option: value}) == round1_key(cfg), option
    for option, value in (("trim", 3), ("region_size", 8), ("demo_train_images", 7), ("some_future_option", 1)):
        assert oracle_key({**cfg, option: value}) != oracle_key(cfg), option
    for option, value in (("iterations", 11), ("labeling", "dominant"), ("seed", 5), ("loss", "rc")):
        assert oracle_key({**cfg, option: value}) == oracle_key(cfg), option


def test_cli_list_and_plan(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", "--list"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and all(n in r.stdout for n in ("labels", "acquisition", "losses", "stage2"))
    r = subprocess.run([sys.executable, "-m", "mulact.sweep.cli", "stage2", "--plan", "--dir", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [line.split() for line in r.stdout.splitlines()[1:]]
    assert len(lines) == 12 and all(words[1:3] == ["to", "run"] for words in lines)
    assert "computes everything" in r.stdout.splitlines()[1]
    assert "round-1 selection + stage 1 from stage1-seed_2" in r.stdout
    assert not (tmp_path / "s").exists()


def test_committed_sweep_files_parse():
    # the sweep files under benchmarks/sweeps/ are run by hand for the evidence reports: a file
    # that no longer parses (an option renamed, a preset removed) must fail here, not there
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps").glob("*.yaml"))
    assert len(files) >= 2
    for f in files:
        spec = load_sweep(str(f))
        assert spec.seeds and spec.variants and spec.baseline in spec.variants, f.name
