"""Run-level pre-aggregation inside a block of pixels, for kernels that scatter into regions.

Superpixel ids (and the (region, top-1 class) keys of the acquisition statistics) come in
runs along a row of pixels. Reducing each run in registers and letting only its last pixel
issue the atomic removes most same-address atomic traffic on the GPU. The helpers work on a
1-D block of ``BLOCK`` (a power of two) lanes with ``log2(BLOCK)`` doubling steps built on
``tl.gather``, so they are exact (no prefix-sum differences) and deterministic inside a block,
and fast under the CPU interpreter too (``tl.associative_scan`` with a custom combine runs
element by element there).
"""
import triton  # noqa: F401  (triton.jit below)
import triton.language as tl


@triton.jit
def run_layout(key, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """For each lane: the lane index of its run's head (int32) and whether it ends a run."""
    i = tl.arange(0, BLOCK)
    prev = tl.gather(key, tl.maximum(i - 1, 0), axis=0)
    nxt = tl.gather(key, tl.minimum(i + 1, BLOCK - 1), axis=0)
    is_head = (i == 0) | (key != prev)
    is_tail = (i == BLOCK - 1) | (key != nxt)
    # Pointer jumping: every lane points one step back until it reaches its head (a fixed point).
    head = tl.where(is_head, i, i - 1)
    for _ in tl.static_range(LOG2_BLOCK):
        head = tl.gather(head, head, axis=0)
    return head, is_tail


@triton.jit
def run_sum(v, head, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """Inclusive segmented sum: lane i holds the sum of v over [head(i), i]."""
    i = tl.arange(0, BLOCK)
    for step in tl.static_range(LOG2_BLOCK):
        d: tl.constexpr = 1 << step
        other = tl.gather(v, tl.maximum(i - d, 0), axis=0)
        v = tl.where(i - d >= head, v + other, v)
    return v


@triton.jit
def run_max(v, head, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    for step in tl.static_range(LOG2_BLOCK):
        d: tl.constexpr = 1 << step
        other = tl.gather(v, tl.maximum(i - d, 0), axis=0)
        v = tl.where(i - d >= head, tl.maximum(v, other), v)
    return v


@triton.jit
def run_min(v, head, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    for step in tl.static_range(LOG2_BLOCK):
        d: tl.constexpr = 1 << step
        other = tl.gather(v, tl.maximum(i - d, 0), axis=0)
        v = tl.where(i - d >= head, tl.minimum(v, other), v)
    return v


def log2(block: int) -> int:
    assert block & (block - 1) == 0, "BLOCK must be a power of two"
    return block.bit_length() - 1

