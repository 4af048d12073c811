"""A generated folder dataset (README, "Your own images"): 5 own classes, mixed image sizes,
RGB masks, shared by the folder-dataset and data-check tests."""
import cv2
import numpy as np
import yaml

CLASSES = [("soil", (120, 80, 40)), ("crop", (40, 200, 60)), ("weed", (230, 220, 30)), ("stone", (150, 150, 150)),
           ("water", (30, 90, 220))]
SIZES = [(64, 96), (80, 72), (72, 120), (96, 64), (64, 64), (88, 100)]


def scene(rng, h, w):
    """An image whose classes are blobs of the class colour (plus noise), and its class map."""
    label = np.zeros((h, w), np.int64)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, len(CLASSES)):
        for _ in range(2):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(8, 24)
            label[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
    colors = np.array([c for _, c in CLASSES], np.int64)
    image = np.clip(colors[label] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    return image, label


def make_folder_dataset(root, *, train=4, val=2, train_masks=True, val_masks=True, rgb_masks=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    doc = {"classes": [{"name": n, "color": list(c)} for n, c in CLASSES], "ignore_index": 255,
           "ignore_color": [255, 255, 255]}
    (root / "classes.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    colors = np.array([c for _, c in CLASSES], np.uint8)
    k = 0
    for split, n, with_masks in (("train", train, train_masks), ("val", val, val_masks)):
        if n == 0:
            continue  # no such split
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        if with_masks:
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = SIZES[k % len(SIZES)]
            k += 1
            image, label = scene(rng, h, w)
            ext = ".jpg" if i % 2 else ".png"
            params = [cv2.IMWRITE_JPEG_QUALITY, 98] if ext == ".jpg" else []
            cv2.imwrite(str(root / "images" / split / f"{split}_{i:02d}{ext}"), image[..., ::-1], params)
            if with_masks:
                if rgb_masks:
                    mask = colors[label]
                    mask[:2, :2] = 255  # a little void
                    cv2.imwrite(str(root / "masks" / split / f"{split}_{i:02d}.png"), mask[..., ::-1])
                else:
                    cv2.imwrite(str(root / "masks" / split / f"{split}_{i:02d}.png"), label.astype(np.uint8))
    return root
