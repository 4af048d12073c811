import os

import numpy as np
import pytest

from mulact.data.demo import render_scene
from mulact.data.superpixels import (
    CacheMismatchError,
    SuperpixelCache,
    compute_superpixels,
    encode_png16,
    grid_superpixels,
    num_regions_for,
    read_png16,
    relabel_contiguous,
    validate_map,
)


@pytest.fixture(scope="module")
def image():
    return render_scene(np.random.default_rng(7), 64, 128)[0]


def assert_contiguous(sp, shape):
    assert sp.shape == shape and sp.dtype == np.int32
    ids = np.unique(sp)
    assert ids[0] == 0 and ids[-1] == ids.size - 1  # every id 0..R-1 used, every pixel covered
    return ids.size


@pytest.mark.parametrize("method", ["seeds", "slic", "grid"])
@pytest.mark.parametrize("region_size", [8, 16])
def test_contiguous_and_roughly_requested_count(image, method, region_size):
    sp = compute_superpixels(image, method, region_size)
    r = assert_contiguous(sp, image.shape[:2])
    want = num_regions_for(64, 128, region_size)
    assert 0.6 * want <= r <= 1.3 * want, (method, region_size, r, want)
    assert np.array_equal(sp, compute_superpixels(image, method, region_size))  # deterministic


def test_grid_layout():
    sp = grid_superpixels(5, 7, 3)
    assert sp.max() + 1 == 6
    assert sp[0, :3].tolist() == [0, 0, 0] and sp[0, 3] == 1 and sp[4, 6] == 5 and sp[3, 0] == 3


def test_relabel_contiguous():
    lab, r = relabel_contiguous(np.array([[7, 7, 3], [100, 3, 7]]))
    assert r == 3 and lab.tolist() == [[1, 1, 0], [2, 0, 1]]


def test_bad_arguments(image):
    with pytest.raises(ValueError, match="method"):
        compute_superpixels(image, "watershed")
    with pytest.raises(ValueError, match="region_size"):
        compute_superpixels(image, "grid", 0)
    with pytest.raises(ValueError, match="image"):
        compute_superpixels(image[..., 0], "seeds")
    with pytest.raises(ValueError, match="unknown parameter"):
        compute_superpixels(image, "seeds", 16, bins=3)


def test_png16_roundtrip_and_limit(tmp_path):
    sp = grid_superpixels(300, 300, 1)  # 90000 regions: too many for 16 bits
    with pytest.raises(ValueError, match="65535"):
        encode_png16(sp)
    sp = grid_superpixels(256, 300, 1)[:, :256]
    sp, _ = relabel_contiguous(sp)
    assert sp.max() == 65535
    (tmp_path / "m.png").write_bytes(encode_png16(sp))
    back = read_png16(tmp_path / "m.png")
    assert back.dtype == np.int32 and np.array_equal(back, sp)
    assert validate_map(back) == 65536


def test_cache_compute_on_miss_and_manifest(tmp_path, image):
    cache = SuperpixelCache(tmp_path / "sp", "seeds", 16, iterations=3)
    calls = []

    def loader():
        calls.append(1)
        return image

    first = cache.get("city/a", loader)
    second = cache.get("city/a", loader)
    assert len(calls) == 1 and np.array_equal(first, second)
    assert (tmp_path / "sp" / "city" / "a.png").exists() and (tmp_path / "sp" / "manifest.json").exists()
    adj = cache.adjacency("city/a")
    assert adj.shape[1] == 2 and (adj[:, 0] < adj[:, 1]).all()
    SuperpixelCache(tmp_path / "sp", "seeds", 16, iterations=3)  # same parameters: fine
    with pytest.raises(CacheMismatchError, match="region_size"):
        SuperpixelCache(tmp_path / "sp", "seeds", 32, iterations=3)
    with pytest.raises(CacheMismatchError, match="slic"):
        SuperpixelCache(tmp_path / "sp", "slic", 16)
    assert not list((tmp_path / "sp").rglob("*.tmp"))


def test_region_counts_file(tmp_path, image):
    cache = SuperpixelCache(tmp_path, "grid", 16)
    cache.save("a", compute_superpixels(image, "grid", 16))
    assert cache.num_regions("a") == 32  # decoded: no counts file yet
    cache.write_counts({"a": 999})
    assert cache.num_regions("a") == 999  # the file is trusted for maps older than it
    st = (tmp_path / "region_counts.json").stat()
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.num_regions("a") == 32  # a map rewritten later is decoded again
