"""Fused, autograd-aware region ops (SPEC §3).

Every op has three backends: a pure-torch ``reference`` (the oracle for tests and the
baseline for benchmarks), ``cpp`` (``mulact._C``, CPU) and ``triton`` (``mulact.kernels``,
CUDA; CPU under ``TRITON_INTERPRET=1``). See :func:`resolve_backend` for how one is chosen
and :func:`last_backend` to ask which one ran.
"""
from ._backend import BACKENDS, cpp_available, last_backend, resolve_backend, triton_available
from .prototype_pseudo_labels import (
    PseudoLabelInfo,
    prototype_pseudo_labels,
    prototype_pseudo_labels_reference,
    pseudo_labels_without_prototypes,
)

__all__ = [
    "BACKENDS",
    "PseudoLabelInfo",
    "cpp_available",
    "last_backend",
    "prototype_pseudo_labels",
    "prototype_pseudo_labels_reference",
    "pseudo_labels_without_prototypes",
    "resolve_backend",
    "triton_available",
]
