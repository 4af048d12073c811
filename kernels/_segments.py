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
def _combine(a, b, OP: tl.constexpr):
    if OP == 0:
        return a + b
    elif OP == 1:
        return tl.maximum(a, b)
    else:
        return tl.minimum(a, b)


@triton.jit
def _run_scan(v, head, OP: tl.constexpr, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """Inclusive segmented scan (OP 0 sum, 1 max, 2 min): lane i combines v over [head(i), i]."""
    i = tl.arange(0, BLOCK)
    for step in tl.static_range(LOG2_BLOCK):
        # `step` is a constexpr, so is the shift; annotating it would make it a constexpr that
        # compiled Triton refuses to rebind on the next unrolled step.
        d = 1 << step
        other = tl.gather(v, tl.maximum(i - d, 0), axis=0)
        v = tl.where(i - d >= head, _combine(v, other, OP), v)
    return v


@triton.jit
def run_sum(v, head, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """Inclusive segmented sum: lane i holds the sum of v over [head(i), i]."""
    return _run_scan(v, head, 0, BLOCK, LOG2_BLOCK)


@triton.jit
def run_max(v, head, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    return _run_scan(v, head, 1, BLOCK, LOG2_BLOCK)


@triton.jit
def run_min(v, head, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    return _run_scan(v, head, 2, BLOCK, LOG2_BLOCK)


@triton.jit
def run_max_rows(v, head, BLOCK: tl.constexpr, LOG2_BLOCK: tl.constexpr):
    """Row-wise inclusive segmented max of a ``(rows, BLOCK)`` tile whose runs (``head``, one
    per column, from :func:`run_layout`) are shared by every row: lane ``[k, i]`` holds the max of
    ``v[k, head(i):i + 1]``."""
    i = tl.arange(0, BLOCK)
    for step in tl.static_range(LOG2_BLOCK):
        d = 1 << step
        src = tl.broadcast_to(tl.maximum(i - d, 0)[None, :], v.shape)
        other = tl.gather(v, src, axis=1)
        v = tl.where((i - d >= head)[None, :], tl.maximum(v, other), v)
    return v


def log2(block: int) -> int:
    assert block & (block - 1) == 0, "BLOCK must be a power of two"
    return block.bit_length() - 1

