"""Pieces shared by the Triton kernels: the prologue of kernels that give each program ``BLOCK``
consecutive pixels of one image (grid ``(cdiv(N, BLOCK), B)``), and small math helpers."""
import triton  # noqa: F401  (triton.jit below)
import triton.language as tl


@triton.jit
def pixel_block(N, BLOCK: tl.constexpr):
    """This program's image ``b`` (int64), flat pixel offsets ``offs`` (int64) and in-image mask."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return b, offs, offs < N


@triton.jit
def report_bad_ids(ids, pmask, R, status_ptr):
    """Largest region id >= R of the block into ``status[1]`` (clipped to int32), see
    ``mulact/ops/_validate.py::new_status``."""
    worst = tl.max(tl.where(pmask & (ids >= R), ids, -1), axis=0)
    if worst >= 0:
        tl.atomic_max(status_ptr + 1, tl.minimum(worst, 2147483647).to(tl.int32))


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
