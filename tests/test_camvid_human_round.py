"""benchmarks/camvid_human_round.py without the browser: the mask-less subset it labels, and its
stand-in annotator, whose answers must be the simulated oracle's for the same regions."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from _folder_data import CLASSES, make_folder_dataset
from _tiny_run import cli

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "camvid_human_round.py"


@pytest.fixture(scope="module")
def mod():
    return runpy.run_path(str(SCRIPT))


def test_evenly_spaced(mod):
    stems = [f"s{k}" for k in range(10)]
    assert mod["evenly_spaced"](stems, 3) == ["s0", "s3", "s6"]
    assert mod["evenly_spaced"](stems, 0) == stems and mod["evenly_spaced"](stems, 12) == stems


def test_copy_has_no_train_masks_and_lists_its_subsets(mod, tmp_path):
    src = make_folder_dataset(tmp_path / "src", train=6, val=3)
    dst = mod["copy_without_train_masks"](src, tmp_path / "copy", 3, 2)
    assert not (dst / "masks" / "train").exists()
    train = (dst / "splits" / "train.txt").read_text().split()
    val = (dst / "splits" / "val.txt").read_text().split()
    assert train == ["train_00", "train_02", "train_04"] and val == ["val_00", "val_01"]
    assert sorted(p.stem for p in (dst / "images" / "train").iterdir()) == train
    assert sorted(p.stem for p in (dst / "masks" / "val").iterdir()) == val
    assert (dst / "classes.yaml").read_bytes() == (src / "classes.yaml").read_bytes()
    assert mod["copy_without_train_masks"](src, dst, 3, 2) == dst  # a rerun keeps the copy
    with pytest.raises(SystemExit, match="no masks/train"):
        mod["copy_without_train_masks"](dst, tmp_path / "again", 3, 2)


def test_stand_in_answers_as_the_simulated_oracle(mod, tmp_path, monkeypatch):
    import dataclasses

    from mulact.al.data import build_oracle, build_split
    from mulact.al.labels import multi_hot_to_bits

    src = make_folder_dataset(tmp_path / "src", train=4, val=2)
    data = mod["copy_without_train_masks"](src, tmp_path / "copy", 0, 0)
    run, cache = tmp_path / "run", tmp_path / "cache"
    r = cli(["--dataset", "folder", "--data-root", str(data), "--run-dir", str(run), "--oracle", "human",
             "--region-size", "16", "--rounds", "1", "--budget", "30", "--iterations", "2", "--batch-size", "2",
             "--crop-size", "48", "--encoder", "resnet18", "--encoder-weights", "null", "--decoder-channels", "16",
             "--num-workers", "0", "--eval-interval", "0"], cache)
    assert r.returncode == 3, r.stderr[-3000:]
    monkeypatch.setenv("MULACT_CACHE", str(cache))  # the stand-in reads the run's superpixel maps
    person = mod["StandIn"](run, src)
    # the simulated oracle of the same run on the dataset with its train masks
    truth = build_split(dataclasses.replace(person.cfg, data_root=str(src), oracle="simulated"), "train")
    queries = json.loads((run / "queries" / "round_01.json").read_text())["queries"]
    assert len(queries) >= 10
    table = build_oracle(truth, [q["image"] for q in queries], trim=person.cfg.trim)
    names = [n for n, _ in CLASSES] + ["other / none of these"]
    for k, q in enumerate(queries):
        got = person.answer(q["name"], q["region"])
        bits = multi_hot_to_bits(np.isin(np.arange(len(names)), [names.index(n) for n in got]))
        assert got and bits == table.bits[table.offsets[k] + q["region"]], (q, got)
