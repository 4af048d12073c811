import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from mulact.data import CityscapesDataset, ensure_demo_dataset
from mulact.data.precompute import main
from mulact.data.superpixels import read_png16, validate_map

N_TRAIN = 40


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo"), num_train=N_TRAIN, num_val=2, height=64, width=128,
                               progress=False)


def run_cli(*args, **popen):
    cmd = [sys.executable, "-m", "mulact.data.precompute", "--no-progress", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_resumes_after_kill(tiny_demo, tmp_path):
    out = tmp_path / "sp"
    args = ["--dataset", "cityscapes", "--root", str(tiny_demo), "--split", "train", "--out", str(out),
            "--region-size", "4", "--workers", "2"]
    proc = run_cli(*args, start_new_session=True)
    split_dir = out / "train"
    deadline = time.monotonic() + 120
    try:
        while len(list(split_dir.rglob("*.png"))) < 3:
            assert proc.poll() is None, f"precompute ended before it could be killed: {proc.communicate()}"
            assert time.monotonic() < deadline, "no maps written within 120 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_at_kill = len(list(split_dir.rglob("*.png")))
    assert 3 <= done_at_kill < N_TRAIN, "the kill came too late to test resuming"
    # every file present is a complete map (atomic writes), even right after the kill
    for png in split_dir.rglob("*.png"):
        validate_map(read_png16(png))

    proc = run_cli(*args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    computed, skipped = (int(v) for v in re.search(r"(\d+) computed, (\d+) already cached", stdout).groups())
    assert computed + skipped == N_TRAIN and skipped >= done_at_kill
    ds = CityscapesDataset(tiny_demo, "train", superpixel_dir=split_dir, region_size=4)
    pngs = sorted(split_dir.rglob("*.png"))
    assert len(pngs) == N_TRAIN and not list(split_dir.rglob("*.tmp"))
    counts = json.loads((split_dir / "region_counts.json").read_text())
    assert len(counts) == N_TRAIN
    for i, s in enumerate(ds.samples):
        sp = read_png16(ds.superpixels.path(s.name))
        assert validate_map(sp, cv2.imread(str(s.image)).shape[:2]) == ds.num_regions(i) == counts[s.name]
    # a third run finds nothing to do
    proc = run_cli(*args)
    stdout, _ = proc.communicate(timeout=300)
    assert f"0 computed, {N_TRAIN} already cached" in stdout


def test_param_mismatch_is_refused(tiny_demo, tmp_path, capsys):
    base = ["--dataset", "cityscapes", "--root", str(tiny_demo), "--split", "val", "--out", str(tmp_path),
            "--workers", "1", "--no-progress"]
    assert main([*base, "--method", "grid", "--region-size", "16"]) == 0
    assert "2 computed, 0 already cached" in capsys.readouterr().out
    assert main([*base, "--method", "grid", "--region-size", "8"]) == 2
    err = capsys.readouterr().err
    assert "region_size" in err and str(tmp_path) in err
    maps = [np.unique(read_png16(p)).size for p in (tmp_path / "val").rglob("*.png")]
    assert maps == [32, 32]  # the refused run left the 16 px maps untouched


def test_missing_or_malformed_dataset(tmp_path, capsys):
    assert main(["--dataset", "cityscapes", "--root", str(tmp_path / "nope"), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope" / "leftImg8bit" / "train") in err and "does not exist" in err

    root = tmp_path / "cs"
    (root / "leftImg8bit" / "train" / "x").mkdir(parents=True)
    assert main(["--dataset", "cityscapes", "--root", str(root), "--split", "train"]) == 2
    assert str(root / "gtFine" / "train") in capsys.readouterr().err

    (root / "gtFine" / "train" / "x").mkdir(parents=True)
    assert main(["--dataset", "cityscapes", "--root", str(root), "--split", "train"]) == 2
    assert "_leftImg8bit.png" in capsys.readouterr().err

    cv2.imwrite(str(root / "leftImg8bit" / "train" / "x" / "x_0_0_leftImg8bit.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["--dataset", "cityscapes", "--root", str(root), "--split", "train"]) == 2
    assert "x_0_0_gtFine_labelIds.png" in capsys.readouterr().err

    assert main(["--dataset", "voc", "--root", str(tmp_path)]) == 2
    assert "JPEGImages" in capsys.readouterr().err
    assert main(["--dataset", "voc"]) == 2
    assert "--root is required" in capsys.readouterr().err


def test_default_workers_fit_in_memory():
    from mulact.data.precompute import default_workers

    cityscapes = 1024 * 2048
    # plenty of memory: one per core
    assert default_workers(cityscapes, "seeds", 16, 128 * 2**30)[0] == 16
    # 24 GiB: SEEDS at 1024x2048 needs ~3.3 GiB a worker, 80 % of 24 GiB holds 5
    n, why = default_workers(cityscapes, "seeds", 16, 24 * 2**30)
    assert n == 5 and "5 of 16 cores" in why and "GiB per worker" in why
    assert default_workers(cityscapes, "slic", 16, 24 * 2**30)[0] == 16  # SLIC is light
    assert default_workers(cityscapes, "seeds", 16, 2**30)[0] == 1  # never 0
    assert default_workers(128 * 256, "seeds", 2, None) == (2, "2 cores (available memory unknown)")


def test_workers_must_be_positive(capsys):
    from mulact.data.precompute import main

    assert main(["--workers", "0"]) == 2
    assert "--workers 0: expected at least 1" in capsys.readouterr().err
