"""Pieces shared by the Triton kernels, in one module: the prologue of kernels that give each
program ``BLOCK`` consecutive pixels of one image (grid ``(cdiv(N, BLOCK), B)``), the labeled
``(classes x pixels)`` tile of the stage-1 kernels and its block sizes, the status reports
(every kernel writes bad ids and non-finite values through these, into the two-int buffer of
``mulact/ops/_validate.py::new_status``; docs/design.md §4), and small math helpers."""
import triton
import triton.language as tl

from ._tuning import pixels_per_program


@triton.jit
def pixel_block(N, BLOCK: tl.constexpr):
    """This program's image ``b`` (int64), flat pixel offsets ``offs`` (int64) and in-image mask."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return b, offs, offs < N


@triton.jit
def report_worst_id(worst, status_ptr):
    """A block's largest bad region id (``-1``: none) into ``status[1]``, clipped to int32 (never
    wrapped); one atomic only when there is something to report."""
    if worst >= 0:
        tl.atomic_max(status_ptr + 1, tl.minimum(worst, 2147483647).to(tl.int32))


@triton.jit
def report_bad_ids(ids, pmask, R, status_ptr):
    """Largest region id >= R among the block's pixels ``pmask`` into ``status[1]``."""
    report_worst_id(tl.max(tl.where(pmask & (ids >= R), ids, -1), axis=0), status_ptr)


@triton.jit
def report_nonfinite_count(n, status_ptr):
    """``status[0] = 1`` when ``n`` (a block's count of NaN/Inf values read) is positive."""
    if n > 0:
        tl.atomic_max(status_ptr, 1)


@triton.jit
def report_nonfinite(x, mask, status_ptr):
    """``status[0] = 1`` when a value of the 2-D tile ``x`` under ``mask`` is NaN or ±Inf. Tested
    with comparisons on the value itself, never an arithmetic identity such as ``(z - z) != 0``,
    which the GPU compiler contracts into an FMA (docs/design.md §4)."""
    bad = mask & ((x != x) | (tl.abs(x) == float("inf")))
    report_nonfinite_count(tl.sum(tl.sum(bad.to(tl.int32), axis=1), axis=0), status_ptr)


@triton.jit
def report_tile_status(status_ptr, bad, rid, m2, x):
    """Status of a labeled tile (:func:`load_labeled_tile`): NaN/Inf among the loaded ``x``
    under ``m2``, and the largest region id of the pixels flagged ``bad``."""
    report_nonfinite(x, m2, status_ptr)
    report_worst_id(tl.max(tl.where(bad, rid, -1), 0), status_ptr)


def block_sizes(num_classes: int, hw: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of the labeled tile: all classes in one tile, ``_tuning.TILE`` (4K)
    elements per program."""
    block_c = triton.next_power_of_2(max(num_classes, 1))
    block_p = pixels_per_program(block_c, 16, 1024)
    block_p = min(block_p, max(16, triton.next_power_of_2(hw)))
    return block_c, block_p


@triton.jit
def load_labeled_tile(logits_ptr, regions_ptr, labels_ptr, b, pid_p, C, HW, R, inv_t,
                      BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, ACC: tl.constexpr):
    """Offsets and masks of a ``(BLOCK_C, BLOCK_P)`` tile of image ``b`` and its region ids:
    ``valid`` pixels have an id in ``[0, R)``, ``bad`` ones an id ``>= R``, ``ridc`` is the id
    clamped to a safe slot."""
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, BLOCK_C)
    pmask = offs_p < HW
    cmask = offs_c < C
    b64 = b.to(tl.int64)
    rid = tl.load(regions_ptr + b64 * HW + offs_p, mask=pmask, other=-1).to(tl.int64)
    valid = pmask & (rid >= 0) & (rid < R)
    bad = pmask & (rid >= R)
    ridc = tl.where(valid, rid, 0)
    return offs_p, offs_c, pmask, cmask, b64, rid, valid, bad, ridc


@triton.jit
def to_acc(v, ACC_FP64: tl.constexpr):
    """Cast to the accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    if ACC_FP64:
        return v.to(tl.float64)
    else:
        return v.to(tl.float32)


@triton.jit
def log1p_accurate(u):
    """log(1 + u), accurate for tiny u (Goldberg): u * log(w) / (w - 1) with w = 1 + u (exact when
    w == 1). Shared by every kernel that evaluates log-softmax as (z_c - max) - log1p(rest), so
    region_class_argmax and the stage-2 prototypes pick the same pixels."""
    w = 1.0 + u
    d = w - 1.0
    return tl.where(d == 0.0, u, tl.log(w) * (u / tl.where(d == 0.0, 1.0, d)))
