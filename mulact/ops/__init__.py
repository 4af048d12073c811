"""Fused, autograd-aware region ops (docs/design.md).

Every op has three backends: a pure-torch ``reference`` (the oracle for tests and the
baseline for benchmarks), ``cpp`` (``mulact._C``, CPU) and ``triton`` (``mulact.kernels``,
CUDA; CPU under ``TRITON_INTERPRET=1``). The fused ones are registered with the dispatcher as
``torch.ops.mulact.<op>``. See :func:`resolve_backend` for how one is chosen,
:func:`last_backend` to ask which one ran and :func:`check_status` for the deferred checks of
CUDA calls.
"""
from ._backend import BACKENDS, cpp_available, last_backend, resolve_backend, triton_available
from ._status import check_status
from .acquisition import (
    ACQUISITION_METHODS,
    PoolStatistics,
    class_prior,
    classbal_scores,
    dominant_class,
    dominant_class_fraction,
    mean_uncertainty,
    measure_for,
    pixbal_scores,
    random_scores,
    region_scores,
    selectable,
)
from .partial_label_loss import partial_label_loss, partial_label_loss_reference
from .prototype_pseudo_labels import (
    PseudoLabelInfo,
    prototype_pseudo_labels,
    prototype_pseudo_labels_reference,
    pseudo_labels_without_prototypes,
)
from .prototypical_pixel_loss import prototypical_pixel_loss, prototypical_pixel_loss_reference
from .region_adjacency import adjacency_csr, neighbor_lists, region_adjacency, region_adjacency_reference
from .region_class_argmax import region_class_argmax, region_class_argmax_reference
from .region_labels_from_mask import (
    RegionLabels,
    dominant_labels,
    region_labels_from_mask,
    region_labels_from_mask_naive,
    region_labels_from_mask_reference,
)
from .region_reduce import region_reduce, region_reduce_reference
from .region_uncertainty_stats import RegionUncertaintyStats, region_uncertainty_stats, region_uncertainty_stats_reference

__all__ = [
    # dispatch
    "BACKENDS", "cpp_available", "last_backend", "resolve_backend", "triton_available", "check_status",
    # docs/design.md §2.1
    "region_reduce", "region_reduce_reference",
    # §2.2
    "RegionUncertaintyStats", "region_uncertainty_stats", "region_uncertainty_stats_reference",
    "ACQUISITION_METHODS", "PoolStatistics", "class_prior", "classbal_scores", "dominant_class",
    "dominant_class_fraction", "mean_uncertainty", "measure_for", "pixbal_scores", "random_scores",
    "region_scores", "selectable",
    # §2.3-2.5
    "partial_label_loss", "partial_label_loss_reference",
    "prototypical_pixel_loss", "prototypical_pixel_loss_reference",
    "region_class_argmax", "region_class_argmax_reference",
    # §2.6
    "PseudoLabelInfo", "prototype_pseudo_labels", "prototype_pseudo_labels_reference",
    "pseudo_labels_without_prototypes",
    # §2.7
    "adjacency_csr", "neighbor_lists", "region_adjacency", "region_adjacency_reference",
    "RegionLabels", "dominant_labels", "region_labels_from_mask", "region_labels_from_mask_naive",
    "region_labels_from_mask_reference",
]
