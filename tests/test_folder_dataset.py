"""`--dataset folder` (README, "Your own images"): own classes, mixed sizes, RGB masks, optional
masks, and damaged data reported before any work with every bad file named."""
import json

import cv2
import numpy as np
import pytest
import yaml
from _folder_data import CLASSES, make_folder_dataset
from _tiny_run import cli

from mulact.data import DatasetNotFoundError, build_dataset
from mulact.data.checks import DataCheckError, check_dataset, check_datasets
from mulact.data.folder import ClassFileError

RUN = ["--dataset", "folder", "--region-size", "16", "--rounds", "2", "--budget", "20", "--iterations", "4",
       "--checkpoint-interval", "2", "--batch-size", "2", "--crop-size", "48", "--encoder", "resnet18",
       "--encoder-weights", "null", "--decoder-channels", "16", "--eval-batch-size", "3",
       "--acquisition-batch-size", "3", "--num-workers", "0", "--eval-interval", "0"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULACT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_reads_own_classes_rgb_and_index_masks(tmp_path, cache):
    for rgb in (True, False):
        root = make_folder_dataset(tmp_path / f"d{rgb}", rgb_masks=rgb)
        ds = build_dataset("folder", root, "train", region_size=16)
        assert ds.class_names == tuple(n for n, _ in CLASSES) and ds.num_classes == 5 and ds.has_labels
        sizes = {tuple(ds.raw(i)["image"].shape[:2]) for i in range(len(ds))}
        assert len(sizes) == len(ds)  # mixed sizes
        lab = ds.load_label(0)
        assert set(np.unique(lab)) <= {0, 1, 2, 3, 4, 255} and (lab == 255).any() == rgb
        assert ds.load_label(0)[5:].max() < 5


def test_split_list_and_missing_masks(tmp_path, cache):
    root = make_folder_dataset(tmp_path / "d", val_masks=False)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("train_02\ntrain_00\n")
    assert build_dataset("folder", root, "train").names() == ["train_02", "train_00"]
    val = build_dataset("folder", root, "val", require_labels=False)
    assert not val.has_labels and (val.load_label(0) == 255).all()
    with pytest.raises(DatasetNotFoundError, match="--oracle human"):
        build_dataset("folder", root, "val")
    (root / "splits" / "train.txt").write_text("nope\n")
    with pytest.raises(DatasetNotFoundError, match="'nope'"):
        build_dataset("folder", root, "train")


@pytest.mark.parametrize("change,match", [
    (lambda d: d["classes"].append({"name": "soil", "color": [1, 2, 3]}), "'soil' appears twice"),
    (lambda d: d["classes"].append({"name": "x", "color": [40, 200, 60]}), r"\[40, 200, 60\].*'crop'"),
    (lambda d: d.update(classes=[]), "non-empty list"),
    (lambda d: d["classes"].__setitem__(0, {"name": "a", "color": [300, 0, 0]}), r"classes\[0\].color"),
    (lambda d: d.update(ignore_index=2), "ignore_index 2 is the index of class 'weed'"),
    (lambda d: d.update(ignore_color=[30, 90, 220]), "ignore_color"),
    (lambda d: d.update(colours=1), "unknown key"),
])
def test_bad_class_file_names_the_file(tmp_path, cache, change, match):
    root = make_folder_dataset(tmp_path / "d", train=1, val=0)
    doc = yaml.safe_load((root / "classes.yaml").read_text())
    change(doc)
    (root / "classes.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ClassFileError, match=match) as err:
        build_dataset("folder", root, "train")
    assert str(root / "classes.yaml") in str(err.value)


def test_empty_split_is_refused(tmp_path, cache):
    root = make_folder_dataset(tmp_path / "d", train=1, val=0)
    (root / "images" / "val").mkdir()
    with pytest.raises(DatasetNotFoundError, match="no images found for split 'val'"):
        build_dataset("folder", root, "val", require_labels=False)


def _damage(root):
    """One of each kind of damage; returns {file: what the message must say}."""
    img, msk = root / "images", root / "masks"
    (img / "train" / "train_00.png").write_bytes(b"")  # zero bytes
    data = (img / "train" / "train_01.jpg").read_bytes()
    (img / "train" / "train_01.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    (msk / "train" / "train_02.png").write_bytes(np.random.default_rng(0).bytes(500))  # random bytes
    m = cv2.imread(str(msk / "train" / "train_03.png"))
    cv2.imwrite(str(msk / "train" / "train_03.png"), m[:, :-8])  # 8 px narrower than its image
    v = cv2.imread(str(msk / "val" / "val_00.png"))
    v[3, 3] = (1, 2, 3)  # a colour that is no class
    cv2.imwrite(str(msk / "val" / "val_00.png"), v)
    data = (img / "val" / "val_01.jpg").read_bytes()
    (img / "val" / "val_01.jpg").write_bytes(data[:200])
    return {img / "train" / "train_00.png": "empty file", img / "train" / "train_01.jpg": "not a readable image",
            msk / "train" / "train_02.png": "not a readable image", msk / "train" / "train_03.png": "but its image",
            msk / "val" / "val_00.png": "[3, 2, 1]", img / "val" / "val_01.jpg": "not a readable image"}


def test_every_bad_file_reported_at_once(tmp_path, cache):
    root = make_folder_dataset(tmp_path / "d", train=4, val=2)
    want = _damage(root)
    train, val = (build_dataset("folder", root, s) for s in ("train", "val"))
    with pytest.raises(DataCheckError) as err:
        check_datasets([(train, None, True), (val, None, True)])
    assert len(err.value.problems) == len(want)
    text = str(err.value)
    for path, what in want.items():
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(str(path) + ":"))
        assert what in line, (path, line)


def test_good_files_are_remembered(tmp_path, cache):
    root = make_folder_dataset(tmp_path / "d", train=3, val=0)
    ds = build_dataset("folder", root, "train")
    assert check_dataset(ds) == 3
    assert check_dataset(ds) == 0  # the rerun reads nothing
    cv2.imwrite(str(root / "masks" / "train" / "train_01.png"), np.full((5, 5), 9, np.uint8))
    with pytest.raises(DataCheckError, match=r"train_01.png: .*\[9\]"):
        check_dataset(ds)  # a changed file is read again


def test_grayscale_image_is_accepted(tmp_path, cache):
    root = make_folder_dataset(tmp_path / "d", train=1, val=0)
    p = root / "images" / "train" / "train_00.png"
    cv2.imwrite(str(p), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
    ds = build_dataset("folder", root, "train")
    check_dataset(ds)
    assert ds.load_image(0).shape[2] == 3


@pytest.mark.parametrize("kind", ["cityscapes", "voc"])
def test_damaged_files_of_other_layouts(tmp_path, cache, kind):
    rng = np.random.default_rng(1)
    if kind == "cityscapes":
        root = tmp_path / "cs"
        for split in ("train", "val"):
            for i in range(2):
                (root / "leftImg8bit" / split / "c").mkdir(parents=True, exist_ok=True)
                (root / "gtFine" / split / "c").mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "leftImg8bit" / split / "c" / f"c_{i}_leftImg8bit.png"),
                            rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))
                cv2.imwrite(str(root / "gtFine" / split / "c" / f"c_{i}_gtFine_labelIds.png"),
                            np.full((32, 48), 7, np.uint8))
        bad_img = root / "leftImg8bit" / "val" / "c" / "c_1_leftImg8bit.png"
        bad_lab = root / "gtFine" / "train" / "c" / "c_0_gtFine_labelIds.png"
        cv2.imwrite(str(bad_lab), np.full((32, 40), 7, np.uint8))
    else:
        root = tmp_path / "VOC2012"
        for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (root / d).mkdir(parents=True)
        for split, ids in (("train", ["a", "b"]), ("val", ["c"])):
            (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids))
            for i in ids:
                cv2.imwrite(str(root / "JPEGImages" / f"{i}.jpg"), rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
                cv2.imwrite(str(root / "SegmentationClass" / f"{i}.png"), np.full((30, 40), 3, np.uint8))
        bad_img = root / "JPEGImages" / "c.jpg"
        bad_lab = root / "SegmentationClass" / "b.png"
        cv2.imwrite(str(bad_lab), np.full((30, 40), 40, np.uint8))  # 40 is no VOC class
    bad_img.write_bytes(bad_img.read_bytes()[:100])
    train, val = (build_dataset(kind, root, s) for s in ("train", "val"))
    with pytest.raises(DataCheckError) as err:
        check_datasets([(train, None, True), (val, None, True)])
    assert {p for p, _ in err.value.problems} == {str(bad_img), str(bad_lab)}


def _run(run_dir, root, cache, *extra):
    return cli(["--data-root", str(root), "--run-dir", str(run_dir), *RUN, *extra], cache)


def test_simulated_run_mixed_sizes_with_stage2(tmp_path):
    root = make_folder_dataset(tmp_path / "d", train=4, val=3)
    res = _run(tmp_path / "run", root, tmp_path / "cache", "--stage2", "--stage2-iterations", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["class_names"] == [n for n, _ in CLASSES]
    assert all(0 <= m["miou"] <= 1 and m["miou_measured"] for m in metrics["rounds"])
    assert "mean delivered region size" in res.stdout


def test_run_without_validation_masks_says_miou_not_measured(tmp_path):
    root = make_folder_dataset(tmp_path / "d", train=4, val=2, val_masks=False)
    res = _run(tmp_path / "run", root, tmp_path / "cache", "--rounds", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mIoU is not measured" in res.stdout and "mIoU n/a" in res.stdout and "nan" not in res.stdout.lower()
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"][0]
    assert rec["miou"] is None and rec["miou_measured"] is False
    # no val split at all: the same
    root = make_folder_dataset(tmp_path / "d2", train=4, val=0, val_masks=False)
    res = _run(tmp_path / "run2", root, tmp_path / "cache", "--rounds", "1", "--eval-interval", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no validation images" in res.stdout and "mIoU n/a" in res.stdout


def test_run_refuses_damaged_data_before_any_work(tmp_path):
    root = make_folder_dataset(tmp_path / "d", train=4, val=2)
    want = _damage(root)
    res = _run(tmp_path / "run", root, tmp_path / "cache")
    assert res.returncode != 0
    for path in want:
        assert str(path) in res.stderr
    assert not (tmp_path / "cache" / "superpixels").exists()  # no superpixel was computed
    assert "Traceback" not in res.stderr


def test_human_run_without_train_masks(tmp_path):
    root = make_folder_dataset(tmp_path / "d", train=4, val=2, train_masks=False)
    res = _run(tmp_path / "run", root, tmp_path / "cache", "--oracle", "human", "--rounds", "1")
    assert res.returncode != 0 and "answer them" in res.stderr, res.stderr[-2000:]
    queries = json.loads((tmp_path / "run" / "queries" / "round_01.json").read_text())
    assert queries["class_names"] == [n for n, _ in CLASSES]
    from mulact.label.service import LabelService

    svc = LabelService(tmp_path / "run")
    assert svc.colors == ["#%02x%02x%02x" % c for _, c in CLASSES]
    # the simulated oracle needs the masks: said, with the way out
    res = _run(tmp_path / "run2", root, tmp_path / "cache")
    assert res.returncode != 0 and "--oracle human" in res.stderr
