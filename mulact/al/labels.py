"""Multi-hot region labels as bit masks: bit ``c`` = class ``c``, bit ``C`` = the *undefined*
class, so a label costs 8 bytes whatever the number of classes (``C + 1 <= 63``)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["bits_to_multi_hot", "multi_hot_to_bits", "popcount"]


def multi_hot_to_bits(multi_hot) -> np.ndarray:
    """``(..., K)`` bool → ``(...)`` uint64 with bit ``k`` set where ``multi_hot[..., k]``."""
    mh = np.asarray(multi_hot.cpu() if torch.is_tensor(multi_hot) else multi_hot).astype(bool)
    if mh.shape[-1] > 63:
        raise ValueError(f"multi_hot: at most 63 classes (incl. undefined), got {mh.shape[-1]}")
    weights = np.left_shift(np.uint64(1), np.arange(mh.shape[-1], dtype=np.uint64))
    return (mh.astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)


def bits_to_multi_hot(bits, num_bits: int) -> np.ndarray:
    b = np.asarray(bits, dtype=np.uint64)
    return ((b[..., None] >> np.arange(num_bits, dtype=np.uint64)) & np.uint64(1)).astype(bool)


def popcount(bits) -> np.ndarray:
    b = np.asarray(bits, dtype=np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(b).astype(np.int64)
    out = np.zeros(b.shape, dtype=np.int64)
    for k in range(64):
        out += ((b >> np.uint64(k)) & np.uint64(1)).astype(np.int64)
    return out
