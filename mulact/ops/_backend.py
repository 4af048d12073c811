"""Backend selection for the fused ops.

Order of precedence: the op's ``backend=`` argument, then the ``MULACT_BACKEND`` environment
variable, then the device of the input (CUDA -> ``triton``, CPU -> ``cpp``, anything else ->
``reference``). A forced choice that cannot run raises; nothing falls back silently. Every
call records the backend it used: ``last_backend("region_reduce")`` returns it and a DEBUG
line goes to the ``mulact.ops`` logger.
"""
from __future__ import annotations

import functools
import importlib
import logging
import os

import torch

BACKENDS = ("reference", "cpp", "triton")
log = logging.getLogger("mulact.ops")
_last: dict[str, str] = {}


def triton_interpreting() -> bool:
    """Whether Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # report the real reason, e.g. a failed build or missing triton
        return f"{type(exc).__name__}: {exc}"
    return None


def cpp_available() -> bool:
    return _import_error("mulact._C") is None


def triton_available() -> bool:
    return _import_error("triton") is None


def _why_not(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device``, or None when it can."""
    if backend == "reference":
        if device.type == "meta":
            return "meta tensors hold no data (a shape only); pass CPU or CUDA tensors"
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ backend runs on CPU tensors only, got a {device.type} tensor"
        err = _import_error("mulact._C")
        return None if err is None else f"the extension mulact._C could not be imported ({err}); reinstall with `pip install -e .`"
    if backend == "triton":
        err = _import_error("triton")
        if err is not None:
            return f"triton could not be imported ({err})"
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpreting():
            return None
        return (f"the Triton backend needs a CUDA tensor (got {device.type}); on the CPU it runs "
                "only under TRITON_INTERPRET=1")
    return f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}"


# Under torch.compile the choice is made once, when the function is traced (it depends only on
# the argument, the environment and the device), and is a constant of the compiled graph.
@torch.compiler.assume_constant_result
def resolve_backend(op: str, device: torch.device, backend: str | None = None) -> str:
    """Pick the backend for one call of ``op`` on ``device`` and record it."""
    source = "argument"
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"{op}: `backend` must be one of {', '.join(map(repr, BACKENDS))} or None, "
                        f"got {backend!r} ({type(backend).__name__})")
    if backend is None:
        backend = os.environ.get("MULACT_BACKEND") or None
        source = "MULACT_BACKEND"
    if backend is None:
        source = "auto"
        backend = {"cuda": "triton", "cpu": "cpp"}.get(device.type, "reference")
    backend = backend.lower()
    reason = _why_not(backend, device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} ({source}) cannot run: {reason}")
    _last[op] = backend
    log.debug("%s: backend=%s (%s, device=%s)", op, backend, source, device)
    return backend


def check_launch(op: str, backend: str, tensor: torch.Tensor) -> None:
    """Inside a registered op (``torch.ops.mulact.*`` can be called directly, bypassing
    :func:`resolve_backend`): refuse a backend that cannot run on the tensor's device with the
    reason, instead of a kernel's low-level error."""
    reason = _why_not(backend, tensor.device)
    if reason is not None:
        raise RuntimeError(f"{op}: backend {backend!r} cannot run: {reason}")


FUSED = ("cpp", "triton")


class LaunchTable:
    """The fused launchers of one op, one per backend of :data:`FUSED`: the one way every
    registered op (``torch.ops.mulact.*``) picks its kernel (docs/design.md, "Dispatch").

    ``LaunchTable(OP, cpp=f, triton=g).launcher(backend, tensor)`` checks that ``backend`` can
    run on ``tensor``'s device (:func:`check_launch`) and returns ``f`` or ``g``. The public
    function of the op resolves the backend first (:func:`resolve_backend`) and calls the
    reference itself for ``"reference"``, so only fused backends reach a table.

    A kernel *design* that exists for some backends only (e.g. a Triton-only fusion, chosen in
    ``mulact.kernels.DESIGNS``) names itself: ``LaunchTable(OP, design="fused_ce",
    triton=g)``. The op asks :meth:`covers` before taking that path, and :meth:`launcher`
    refuses a backend the design has no kernel for.
    """

    def __init__(self, op: str, *, design: str | None = None, **launchers) -> None:
        given = set(launchers)
        if design is None and given != set(FUSED):
            raise TypeError(f"LaunchTable({op!r}): expected one launcher for each of {', '.join(FUSED)}, got "
                            f"{', '.join(sorted(launchers)) or 'none'}")
        if design is not None and (not given or not given <= set(FUSED)):
            raise TypeError(f"LaunchTable({op!r}, design={design!r}): expected launchers for some of "
                            f"{', '.join(FUSED)}, got {', '.join(sorted(launchers)) or 'none'}")
        self.op = op
        self.design = design
        self.launchers = launchers

    def covers(self, backend: str) -> bool:
        """Whether this table has a kernel for ``backend``."""
        return backend in self.launchers

    def launcher(self, backend: str, tensor: torch.Tensor):
        check_launch(self.op, backend, tensor)
        if backend not in self.launchers:
            if self.design is not None and backend in FUSED:
                raise RuntimeError(f"{self.op}: design {self.design!r} has no {backend} kernel; it runs on "
                                   f"{', '.join(sorted(self.launchers))}")
            # "reference" (or a name the op's schema let through)
            raise RuntimeError(f"{self.op}: backend {backend!r} has no fused kernel; expected one of "
                               f"{', '.join(FUSED)}")
        return self.launchers[backend]


def last_backend(op: str) -> str | None:
    """The backend used by the most recent call of ``op`` in this process (None if never)."""
    return _last.get(op)
