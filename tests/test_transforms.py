import pytest
import torch

from mulact.data.transforms import EvalTransform, TrainTransform, denormalize, normalize

H, W = 37, 53


def coordinate_maps():
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = torch.stack([yy, xx, torch.full_like(yy, 7)]).float()
    label = (yy + 2 * xx) % 200
    regions = yy * W + xx
    return image, label, regions


@pytest.mark.parametrize("crop", [(16, 24), (37, 53), (50, 70)])
@pytest.mark.parametrize("seed", range(6))
def test_unscaled_crop_and_flip_keep_maps_aligned(crop, seed):
    image, label, regions = coordinate_maps()
    t = TrainTransform(crop, scale_range=(1.0, 1.0))
    im, lab, reg = t(image, label, regions, generator=torch.Generator().manual_seed(seed))
    assert im.shape == (3, *crop) and lab.shape == crop and reg.shape == crop
    assert lab.dtype == torch.int64 and reg.dtype == torch.int64
    pad = reg < 0
    assert torch.equal(pad, lab == 255) and bool((im[:, pad] == 0).all())
    y, x = reg // W, reg % W
    valid = ~pad
    assert torch.equal(im[0][valid], y[valid].float()) and torch.equal(im[1][valid], x[valid].float())
    assert torch.equal(lab[valid], ((y + 2 * x) % 200)[valid])
    # the crop is a rigid window: rows/cols step by exactly one source pixel
    rows, cols = torch.nonzero(valid, as_tuple=True)
    dy = y[valid] - rows
    dx = x[valid] - cols
    assert dy.unique().numel() == 1
    flipped = dx.unique().numel() != 1
    if flipped:
        assert (x[valid] + cols).unique().numel() == 1
    assert int(valid.sum()) == min(crop[0], H) * min(crop[1], W)


@pytest.mark.parametrize("seed", range(6))
def test_scaled_maps_stay_aligned(seed):
    image, label, regions = coordinate_maps()
    t = TrainTransform((40, 40), scale_range=(0.5, 2.0))
    im, lab, reg = t(image, label, regions, generator=torch.Generator().manual_seed(seed))
    valid = reg >= 0
    assert torch.equal(valid, lab != 255)
    y, x = (reg // W).float(), (reg % W).float()
    # bilinear (half-pixel centres) vs nearest-exact: within half a source pixel
    assert float((im[0][valid] - y[valid]).abs().max()) <= 0.5 + 1e-4
    assert float((im[1][valid] - x[valid]).abs().max()) <= 0.5 + 1e-4
    assert torch.equal(lab[valid], ((reg // W + 2 * (reg % W)) % 200)[valid])


def test_seeded_reproducible():
    image, label, regions = coordinate_maps()
    t = TrainTransform((20, 20))
    a = t(image, label, regions, generator=torch.Generator().manual_seed(3))
    b = t(image, label, regions, generator=torch.Generator().manual_seed(3))
    c = [t(image, label, regions, generator=torch.Generator().manual_seed(s))[2] for s in range(4, 8)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert any(not torch.equal(a[2], r) for r in c)


def test_eval_and_normalize():
    image, label, regions = coordinate_maps()
    assert all(torch.equal(u, v) for u, v in zip(EvalTransform()(image, label, regions), (image, label, regions)))
    x = torch.rand(3, 4, 5)
    assert torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
    with pytest.raises(ValueError, match="label"):
        TrainTransform(8)(image, label[:3], regions)
    with pytest.raises(ValueError, match="crop_size"):
        TrainTransform((0, 4))
