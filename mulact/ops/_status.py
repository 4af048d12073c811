"""When the fused kernels' status buffer is read back (see docs/design.md, "Status and NaN policy").

Every fused kernel writes ``[non-finite seen, largest id >= R or -1]`` into a two-int status
tensor during its single pass. Reading it on the host right after the launch would block the
CPU until a GPU has finished, on every call. So:

* a CPU status is checked at once (the kernel has already finished): the call itself raises;
* a CUDA status is copied into pinned host memory without blocking, behind a CUDA event, and
  checked later: when the next fused kernel is launched, if the earlier one has finished (no wait), or
  at :func:`check_status` (which waits; call it where you synchronise anyway, e.g. when you
  log a loss). The error names the op that saw the bad input.

``defer_on_cpu(True)`` routes CPU statuses through the deferred path too; the tests use it to
run the CUDA code path through the Triton interpreter.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import NamedTuple

import torch

from ._validate import raise_on_status


class _Pending(NamedTuple):
    op: str
    host: torch.Tensor
    event: object  # torch.cuda.Event, or None when the copy is already complete
    num_regions: int
    name: str
    regions: torch.Tensor | None  # rescanned on the error path only, for the real offending id


_pending: deque[_Pending] = deque()
_lock = threading.Lock()
_force_defer = False


def defer_on_cpu(flag: bool) -> bool:
    """Defer CPU statuses as CUDA ones are (tests); returns the previous setting."""
    global _force_defer
    old, _force_defer = _force_defer, bool(flag)
    return old


def report(op: str, status: torch.Tensor, num_regions: int, name: str = "logits",
           regions: torch.Tensor | None = None) -> None:
    """Raise now (CPU) or queue the check (CUDA) for one kernel's status buffer."""
    if status.device.type == "cpu" and not _force_defer:
        raise_on_status(op, status, num_regions, name, regions=regions)
        return
    check_status(wait=False)  # surface an earlier call's bad input as soon as its kernel is done
    if status.device.type == "cuda":
        host = torch.empty(status.shape, dtype=status.dtype, pin_memory=True)
        host.copy_(status, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
    else:
        host, event = status.clone(), None
    with _lock:
        _pending.append(_Pending(op, host, event, num_regions, name, regions))


def check_status(wait: bool = True) -> None:
    """Raise the error of the oldest queued kernel status that reports bad input.

    ``wait=False`` checks only the statuses whose kernels have already finished (never
    blocks); that is what every mulact op does on entry. ``wait=True`` (default) waits for all
    of them: a synchronisation point.
    """
    while True:
        with _lock:
            if not _pending:
                return
            item = _pending[0]
            if item.event is not None and not item.event.query():
                if not wait:
                    return
                item.event.synchronize()
            _pending.popleft()
        raise_on_status(item.op, item.host, item.num_regions, item.name, regions=item.regions)


def discard() -> None:
    """Drop every queued status unchecked (tests: a status one test leaves must not fail the next)."""
    with _lock:
        _pending.clear()


def pending() -> int:
    """Number of queued, not yet checked statuses."""
    return len(_pending)
