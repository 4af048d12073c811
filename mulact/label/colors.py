"""Display colours of the dataset's classes (the colours of its own label images)."""
from __future__ import annotations

__all__ = ["class_colors"]


def _voc_palette(n: int) -> list[tuple[int, int, int]]:
    # The PASCAL VOC colour map: class index bits spread over the high bits of R, G, B.
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def class_colors(dataset: str, class_names, data_root=None) -> list[str]:
    """``#rrggbb`` per class: Cityscapes (and the demo) from cityscapesscripts, VOC's palette,
    a folder dataset's own colours (its ``classes.yaml`` under ``data_root``), else
    matplotlib's tab20 cycle."""
    names = list(class_names)
    if dataset == "folder" and data_root is not None:
        from pathlib import Path

        from mulact.data.folder import CLASSES_FILE, read_class_table

        table = read_class_table(Path(data_root).expanduser() / CLASSES_FILE)
        if list(table.names) != names:
            raise ValueError(f"{Path(data_root) / CLASSES_FILE} now names the classes {list(table.names)}, but the run "
                             f"was made with {names}; restore the class file the run was started with")
        return ["#%02x%02x%02x" % c for c in table.colors]
    if dataset in ("cityscapes", "demo"):
        from cityscapesscripts.helpers.labels import labels

        by_name = {lab.name: lab.color for lab in labels}
        if all(n in by_name for n in names):
            return ["#%02x%02x%02x" % tuple(by_name[n]) for n in names]
    if dataset == "voc":
        return ["#%02x%02x%02x" % c for c in _voc_palette(len(names))]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return ["#%02x%02x%02x" % tuple(int(255 * v) for v in cmap(k % 20)[:3]) for k in range(len(names))]
