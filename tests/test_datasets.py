import hashlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from mulact.data import (
    CityscapesDataset,
    DatasetNotFoundError,
    TrainTransform,
    VOCDataset,
    build_dataset,
    ensure_demo_dataset,
)
from mulact.data.cityscapes import ID_TO_TRAIN_ID
from mulact.ops import region_adjacency, region_labels_from_mask

SMALL = dict(num_train=6, num_val=2, height=64, width=128, progress=False)


def tree_hash(root):
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest(), len(files)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo"), seed=0, **SMALL)


def test_demo_deterministic(demo, tmp_path):
    again = ensure_demo_dataset(tmp_path / "a", seed=0, **SMALL)
    other = ensure_demo_dataset(tmp_path / "b", seed=1, **SMALL)
    h0, n0 = tree_hash(demo)
    assert n0 == 2 * (6 + 2) + 1  # images, labels and files.sha256
    assert tree_hash(again) == (h0, n0)
    assert tree_hash(other)[0] != h0
    assert ensure_demo_dataset(tmp_path / "a", seed=0, **SMALL) == again  # reused, not regenerated
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".") and p.is_dir()]  # no temp dirs left


def test_demo_env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULACT_CACHE", str(tmp_path))
    path = ensure_demo_dataset(num_train=1, num_val=1, height=32, width=64, progress=False)
    assert path.parent == tmp_path / "demo"
    with pytest.raises(ValueError, match="height"):
        ensure_demo_dataset(height=2)


def test_demo_loads_through_cityscapes_loader(demo, tmp_path):
    ds = CityscapesDataset(demo, "train", superpixels="grid", region_size=16, superpixel_dir=tmp_path / "sp")
    assert len(ds) == 6 and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.class_names[0] == "road" and ds.class_names[13] == "car" and ds.class_names[18] == "bicycle"
    item = ds[1]
    assert item["image"].shape == (3, 64, 128) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["regions"].dtype == torch.int64
    assert item["index"] == 1 and item["name"] == "demo/demo_000001_000019"
    assert abs(float(item["image"].mean())) < 2.5
    raw_ids = cv2.imread(str(ds.samples[1].label), cv2.IMREAD_UNCHANGED)
    assert torch.equal(item["label"], torch.from_numpy(ID_TO_TRAIN_ID[raw_ids]))
    # spot-check the labelId -> trainId table against cityscapesscripts' values
    assert ID_TO_TRAIN_ID[7] == 0 and ID_TO_TRAIN_ID[26] == 13 and ID_TO_TRAIN_ID[23] == 10
    assert ID_TO_TRAIN_ID[1] == 255 and ID_TO_TRAIN_ID[0] == 255
    labels = torch.cat([ds[i]["label"].flatten() for i in range(len(ds))]).unique().tolist()
    assert 255 in labels and {0, 1, 2, 5, 7, 8, 9, 10, 13} <= set(labels) and max(v for v in labels if v != 255) < 19
    assert ds.num_regions(1) == 32 and int(item["regions"].max()) == 31
    raw = ds.raw(1)
    assert raw["image"].dtype == torch.uint8 and raw["image"].shape == (64, 128, 3)
    assert raw["num_regions"] == 32 and torch.equal(raw["regions"], item["regions"])
    out = region_labels_from_mask(raw["label"][None], raw["regions"][None], raw["num_regions"], ds.num_classes)
    assert out.multi_hot.shape == (1, 32, 20) and (out.cost >= 1).all()
    assert torch.equal(ds.adjacency(1), region_adjacency(raw["regions"][None], 32)[0])


def test_training_transform_draws_from_the_global_rng(demo, tmp_path):
    kw = dict(superpixels="grid", region_size=8, superpixel_dir=tmp_path / "sp", transform=TrainTransform((48, 48)))
    a = CityscapesDataset(demo, "train", **kw)
    torch.manual_seed(5)
    x = a[2]
    torch.manual_seed(5)
    y = a[2]
    assert all(torch.equal(x[k], y[k]) for k in ("image", "label", "regions"))
    assert x["image"].shape == (3, 48, 48)
    assert any(not torch.equal(a[2]["regions"], x["regions"]) for _ in range(5))


def test_build_dataset(tmp_path):
    ds = build_dataset("demo", tmp_path, "val", demo_options=dict(SMALL), superpixels="grid", region_size=16,
                       superpixel_dir=tmp_path / "sp")
    assert isinstance(ds, CityscapesDataset) and len(ds) == 2
    with pytest.raises(ValueError, match="name"):
        build_dataset("kitti", tmp_path, "train")
    with pytest.raises(ValueError, match="root"):
        build_dataset("cityscapes", None, "train")


def test_missing_cityscapes(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="leftImg8bit"):
        CityscapesDataset(tmp_path, "train")


def make_voc(root):
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = list(rng.integers(0, 256, 768).astype(np.uint8))
    for name in ("2007_000001", "2007_000002"):
        cv2.imwrite(str(voc / "JPEGImages" / f"{name}.jpg"), rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
        lab = np.zeros((40, 50), np.uint8)
        lab[10:30, 10:30] = 15
        lab[10, 10:30] = 255
        im = Image.fromarray(lab, mode="P")
        im.putpalette(palette)
        im.save(voc / "SegmentationClass" / f"{name}.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n2007_000002\n")
    return voc


def test_voc(tmp_path):
    voc = make_voc(tmp_path)
    ds = VOCDataset(tmp_path, "train", superpixels="slic", region_size=10, superpixel_dir=tmp_path / "sp")
    assert ds.root == voc and len(ds) == 2 and ds.num_classes == 21 and ds.class_names[15] == "person"
    item = ds[0]
    assert set(item["label"].unique().tolist()) == {0, 15, 255}
    assert item["image"].shape == (3, 40, 50)
    r = ds.num_regions(0)
    assert sorted(item["regions"].unique().tolist()) == list(range(r))
    with pytest.raises(DatasetNotFoundError, match="val.txt"):
        VOCDataset(tmp_path, "val")
    with pytest.raises(DatasetNotFoundError, match="JPEGImages"):
        VOCDataset(tmp_path / "elsewhere", "train")
    im = Image.fromarray(np.full((40, 50), 40, np.uint8), mode="P")
    im.putpalette(list(range(256)) * 3)
    im.save(voc / "SegmentationClass" / "2007_000002.png", optimize=False)
    assert np.asarray(Image.open(voc / "SegmentationClass" / "2007_000002.png")).max() == 40
    with pytest.raises(ValueError, match="40"):
        ds[1]
