"""Delivered superpixel counts over image sizes x region sizes x methods (README "Superpixels")."""
import hashlib
import json

import cv2
import numpy as np
import pytest

from mulact.data.seeds_grid import COUNT_TOLERANCE, opencv_seeds_grid, plan_seeds
from mulact.data.superpixels import CacheMismatchError, SuperpixelCache, compute_superpixels, num_regions_for

# odd, prime and badly dividing sides from 64 to 2048
SIDES = (64, 67, 97, 131, 180, 240, 257, 360, 375, 480, 500, 509, 1021, 1024, 2039, 2048)


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return data.astronaut()


def test_grid_arithmetic_matches_opencv():
    rng = np.random.default_rng(0)
    for _ in range(60):
        w, h = (int(v) for v in rng.integers(40, 700, 2))
        n, levels = int(rng.integers(1, 2000)), int(rng.integers(1, 7))
        got, _ = opencv_seeds_grid(w, h, [n], levels)
        if got[0] == 0:
            continue  # OpenCV would divide by zero there: never called with such parameters
        real = cv2.ximgproc.createSuperpixelSEEDS(w, h, 3, n, levels, 3, 10, True).getNumberOfSuperpixels()
        assert got[0] == real, (w, h, n, levels)


def test_issue_sizes_were_short():
    # the bug: OpenCV's own grid at VOC-like sizes
    assert opencv_seeds_grid(500, 375, [183], 5)[0][0] == 70
    assert opencv_seeds_grid(240, 180, [169], 5)[0][0] == 35


@pytest.mark.parametrize("region_size", [16, 32, 64])
def test_seeds_plan_within_tolerance_over_size_table(region_size):
    checked = 0
    for h in SIDES[::2] + (375,):
        for w in SIDES[1::2] + (500,):
            n = num_regions_for(h, w, region_size)
            if n < 10:  # below OpenCV's minimum request (README)
                continue
            plan = plan_seeds(h, w, n, 5)
            assert abs(plan.regions - n) <= COUNT_TOLERANCE * n, (h, w, region_size, plan)
            checked += 1
    assert checked > 40


def test_working_sizes_unchanged_where_opencv_was_right():
    assert not plan_seeds(1024, 2048, 2048, 5).resampled  # Cityscapes at 32 px
    assert not plan_seeds(128, 256, 128, 5).resampled  # demo at 16 px
    assert plan_seeds(375, 500, 183, 5).resampled


def test_demo_size_map_is_byte_identical(photo):
    img = cv2.resize(photo, (256, 128))
    sp = compute_superpixels(img, "seeds", 16)
    # sha256 of the map computed by mulact before the count fix (4b84388)
    assert hashlib.sha256(sp.tobytes()).hexdigest().startswith("93c377cf6ec8ff9f")


@pytest.mark.parametrize("method", ["seeds", "slic"])
@pytest.mark.parametrize("size,region_size", [((375, 500), 32), ((180, 240), 16), ((97, 131), 16), ((257, 67), 16)])
def test_delivered_counts(photo, method, size, region_size):
    h, w = size
    img = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    sp = compute_superpixels(img, method, region_size)
    n = num_regions_for(h, w, region_size)
    got = int(sp.max()) + 1
    assert sp.shape == (h, w) and np.unique(sp).size == got
    assert abs(got - n) <= COUNT_TOLERANCE * n, (method, size, region_size, got, n)


def test_legacy_cache_with_changed_sizes_is_refused(tmp_path, photo):
    root = tmp_path / "sp"
    cache = SuperpixelCache(root, "seeds", 32)
    img = cv2.resize(photo, (500, 375))
    cache.save("a", compute_superpixels(img, "seeds", 32))
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["count_rule"]  # as written by mulact before the count fix
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match="a.png"):
        SuperpixelCache(root, "seeds", 32)


def test_legacy_cache_of_unchanged_sizes_is_kept(tmp_path, photo):
    root = tmp_path / "sp"
    cache = SuperpixelCache(root, "seeds", 16)
    cache.save("a", compute_superpixels(cv2.resize(photo, (256, 128)), "seeds", 16))
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["count_rule"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    SuperpixelCache(root, "seeds", 16).load("a")
    assert json.loads((root / "manifest.json").read_text())["count_rule"] == 1  # upgraded in place


def test_region_size_warning():
    from mulact.data.superpixels import region_size_check

    side, warn = region_size_check(375 * 500, 70, 32, "voc train")  # OpenCV's grid before the fix
    assert round(side, 1) == 51.8 and "voc train" in warn and "+62 %" in warn
    side, warn = region_size_check(375 * 500, 180, 32, "voc train")
    assert round(side, 1) == 32.3 and warn is None
    assert region_size_check(100 * 100, 25, 16, "x")[1] is None  # 20 px: exactly 25 % off
    assert region_size_check(100 * 100, 24, 16, "x")[1] is not None
    assert region_size_check(100 * 100, 40, 16, "x")[1] is None
