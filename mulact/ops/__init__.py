"""Fused, autograd-aware region ops (SPEC §3).

Every op has three backends: a pure-torch ``reference`` (the oracle for tests and the
baseline for benchmarks), ``cpp`` (``mulact._C``, CPU) and ``triton`` (``mulact.kernels``,
CUDA; CPU under ``TRITON_INTERPRET=1``). See :func:`resolve_backend` for how one is chosen
and :func:`last_backend` to ask which one ran.
"""
from ._backend import BACKENDS, cpp_available, last_backend, resolve_backend, triton_available
from .region_adjacency import adjacency_csr, neighbor_lists, region_adjacency, region_adjacency_reference
from .region_labels_from_mask import RegionLabels, dominant_labels, region_labels_from_mask, region_labels_from_mask_naive, region_labels_from_mask_reference
from .partial_label_loss import partial_label_loss, partial_label_loss_reference
from .prototypical_pixel_loss import prototypical_pixel_loss, prototypical_pixel_loss_reference
from .region_class_argmax import region_class_argmax, region_class_argmax_reference
from .prototype_pseudo_labels import (
    PseudoLabelInfo,
    prototype_pseudo_labels,
    prototype_pseudo_labels_reference,
    pseudo_labels_without_prototypes,
)

__all__ = [
    "BACKENDS",
    "RegionLabels",
    "adjacency_csr",
    "dominant_labels",
    "neighbor_lists",
    "region_adjacency",
    "region_adjacency_reference",
    "region_labels_from_mask",
    "region_labels_from_mask_naive",
    "region_labels_from_mask_reference",
    "cpp_available",
    "last_backend",
    "partial_label_loss",
    "partial_label_loss_reference",
    "prototypical_pixel_loss",
    "prototypical_pixel_loss_reference",
    "region_class_argmax",
    "region_class_argmax_reference",
    "PseudoLabelInfo",
    "prototype_pseudo_labels",
    "prototype_pseudo_labels_reference",
    "pseudo_labels_without_prototypes",
    "resolve_backend",
    "triton_available",
]
from .region_uncertainty_stats import RegionUncertaintyStats, region_uncertainty_stats, region_uncertainty_stats_reference  # noqa: E402,E501
from .region_reduce import region_reduce, region_reduce_reference  # noqa: E402
from .acquisition import *  # noqa: E402,F401,F403  (names listed in acquisition.__all__)
from . import acquisition as _acquisition  # noqa: E402

__all__ += ["RegionUncertaintyStats", "region_uncertainty_stats", "region_uncertainty_stats_reference",
            "region_reduce", "region_reduce_reference", *_acquisition.__all__]
