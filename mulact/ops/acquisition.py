"""Region acquisition scores from the statistics of :func:`region_uncertainty_stats`.

Everything here is pure torch on small ``(..., R, C)`` tensors — the per-pixel work was done
by the one-pass kernel. The flow of one acquisition round over a pool::

    pool = PoolStatistics()
    with torch.no_grad():
        for images, regions, num_regions in pool_loader:        # one forward pass per image
            logits = model(images)
            pool.update(region_uncertainty_stats(logits, regions, num_regions, temperature=1.0,
                                                 measure=measure_for("pixbal")))
    scores = pool.scores("pixbal", nu=6.0, undefined_class=19)   # (num_images, R_max)
    scores[already_labeled] = 0; take regions by descending score (and pool.selectable())

or, by hand, with the per-image stats stacked to ``u_sum, count (N, R, C)``:

* ``prior = class_prior(prob_sum, num_pixels)`` — P(c), Eq. (3), the mean softmax over every
  pool pixel that lies in a region (accumulate ``prob_sum`` and ``num_pixels`` over all batches);
* ``region_scores(method, u_sum, count, prior=prior, nu=6.0, undefined_class=19)``.

PixBal (Eq. 4) weighs each pixel by ``w(c_b) = (1 + ν P(c_b))^-2`` of its top-1 class; since
the statistics are already split by top-1 class, ``Σ_c w_c · u_sum[r, c] / n_r`` is the score
and one pass over the pool suffices (the direct formulation needs P(c) before the weights).

Conventions:

* Scores are ``>= 0`` and larger means "query first". A region with no pixel, or whose
  dominant predicted class (argmax of the top-1 counts, ties → smaller class) is
  ``undefined_class``, gets exactly 0; :func:`selectable` gives the mask of regions that may
  be chosen at all — selection code should use it rather than rely on 0 sorting last (an
  extremely confident region can score 0 too).
* ``"random"`` scores are uniform in ``(0, 1]`` from the given generator, so excluded regions
  (0) still sort last.
* ``"margin"``, ``"entropy"`` and ``"least_confidence"`` are the region mean of u computed
  with that measure (pass ``measure=measure_for(method)`` to the stats op); ``"bvsb"``,
  ``"classbal"``, ``"pixbal"`` and ``"knn"`` use the BvSB measure.

Registry: :data:`ACQUISITIONS` maps every name to its :class:`Acquisition` (scoring function,
pixel measure, whether it needs a model and the pool-wide class prior, one line of docs). The
configuration's choices, the loop, the sweep and ``mulact-train --help`` read it; a new
acquisition function is its scoring function plus one entry there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "ACQUISITIONS",
    "ACQUISITION_METHODS",
    "Acquisition",
    "PoolStatistics",
    "ScoreInputs",
    "class_prior",
    "classbal_scores",
    "dominant_class",
    "dominant_class_fraction",
    "knn_density_scores",
    "mean_uncertainty",
    "measure_for",
    "pixbal_scores",
    "random_scores",
    "region_scores",
    "region_size",
    "selectable",
]

OP = "region_scores"


def _check_method(method) -> None:
    if method not in ACQUISITION_METHODS:
        raise ValueError(f"{OP}: `method` must be one of {', '.join(map(repr, ACQUISITION_METHODS))}, got {method!r}")


def _check_stats(u_sum, count) -> None:
    if not isinstance(u_sum, torch.Tensor) or not u_sum.is_floating_point():
        raise TypeError(f"{OP}: `u_sum` must be a floating-point tensor (..., R, C), got "
                        f"{getattr(u_sum, 'dtype', type(u_sum).__name__)}")
    if not isinstance(count, torch.Tensor) or count.is_floating_point() or count.dtype == torch.bool:
        raise TypeError(f"{OP}: `count` must be an integer tensor (..., R, C), got "
                        f"{getattr(count, 'dtype', type(count).__name__)}")
    if u_sum.dim() < 2 or u_sum.shape != count.shape:
        raise ValueError(f"{OP}: `u_sum` and `count` must have the same shape (..., R, C), got "
                         f"{tuple(u_sum.shape)} and {tuple(count.shape)}")
    if u_sum.device != count.device:
        raise ValueError(f"{OP}: `u_sum` and `count` must be on one device, got {u_sum.device} and {count.device}")


def _check_class_vector(name: str, t, num_classes: int) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{OP}: `{name}` must be a floating-point tensor of shape ({num_classes},)")
    if tuple(t.shape) != (num_classes,):
        raise ValueError(f"{OP}: `{name}` must have shape ({num_classes},), got {tuple(t.shape)}")


def _check_distribution(name: str, p: torch.Tensor) -> None:
    """P(c) is a mean of softmax vectors: finite, non-negative, summing to 1 (up to the float32
    rounding of a pool-wide sum). Eager CPU calls raise naming the values; on CUDA and under
    ``torch.compile`` the check is ``torch._assert_async`` (no host sync, no graph break), as in
    :func:`class_prior`."""
    what = f"{OP}: `{name}` must be a probability vector (finite, >= 0, summing to 1, as class_prior returns)"
    ok = torch.isfinite(p).all() & (p >= 0).all() & ((p.double().sum() - 1.0).abs() <= 1e-3)
    if p.device.type != "cpu" or torch.compiler.is_compiling():
        torch._assert_async(ok, what)
    elif not bool(ok):
        raise ValueError(f"{what}, got sum {float(p.double().sum()):.6g} and min {float(p.min()):.6g}")


def dominant_class(count: torch.Tensor) -> torch.Tensor:
    """``(..., R)`` int64: the class with the most top-1 pixels in each region (ties → smaller
    class), ``-1`` for a region without pixels."""
    if not isinstance(count, torch.Tensor) or count.dim() < 1:
        raise TypeError(f"{OP}: `count` must be a tensor (..., R, C)")
    if count.shape[-1] == 0:
        return torch.full(count.shape[:-1], -1, dtype=torch.int64, device=count.device)
    dom = count.argmax(dim=-1)  # first maximal index
    return dom.masked_fill(count.sum(dim=-1) == 0, -1)


def region_size(count: torch.Tensor) -> torch.Tensor:
    """``(..., R)`` int64 pixels per region."""
    return count.sum(dim=-1, dtype=torch.int64)


def selectable(count: torch.Tensor, undefined_class: int | None = None) -> torch.Tensor:
    """``(..., R)`` bool: regions that may be queried (non-empty, dominant class not undefined)."""
    ok = region_size(count) > 0
    if undefined_class is not None:
        ok &= dominant_class(count) != undefined_class
    return ok


def class_prior(prob_sum: torch.Tensor, num_pixels: int | torch.Tensor) -> torch.Tensor:
    """P(c) of Eq. (3): ``prob_sum / num_pixels`` as float32 ``(C,)``.

    ``prob_sum`` and ``num_pixels`` are the sums over *all* pool batches of the fields of
    :class:`RegionUncertaintyStats`. ``num_pixels`` may be an int or the 0-d integer tensor
    the op returns; a tensor is checked (> 0) without a host sync (``torch._assert_async``)."""
    if not isinstance(prob_sum, torch.Tensor) or not prob_sum.is_floating_point() or prob_sum.dim() != 1:
        raise TypeError(f"class_prior: `prob_sum` must be a floating-point (C,) tensor, got "
                        f"{getattr(prob_sum, 'shape', type(prob_sum).__name__)}")
    if isinstance(num_pixels, torch.Tensor):
        if num_pixels.dim() != 0 or num_pixels.is_floating_point() or num_pixels.dtype == torch.bool:
            raise ValueError(f"class_prior: `num_pixels` must be a positive int or a 0-d integer tensor, "
                             f"got a {num_pixels.dtype} tensor of shape {tuple(num_pixels.shape)}")
        torch._assert_async(num_pixels > 0, "class_prior: `num_pixels` must be positive")
        return prob_sum.to(torch.float32) / num_pixels.to(prob_sum.device, torch.float32)
    if isinstance(num_pixels, bool) or not isinstance(num_pixels, int) or num_pixels <= 0:
        raise ValueError(f"class_prior: `num_pixels` must be a positive int, got {num_pixels!r}")
    return prob_sum.to(torch.float32) / num_pixels


def mean_uncertainty(u_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``(..., R)`` float32 region mean of u: ``Σ_c u_sum / Σ_c count``; 0 for empty regions."""
    _check_stats(u_sum, count)
    n = region_size(count)
    total = u_sum.to(torch.float32).sum(dim=-1)
    return torch.where(n > 0, total / n.clamp(min=1).to(torch.float32), torch.zeros_like(total))




def pixbal_scores(u_sum: torch.Tensor, count: torch.Tensor, prior: torch.Tensor, nu: float = 6.0) -> torch.Tensor:
    """PixBal (Eq. 4): ``Σ_c (1 + ν P(c))^-2 · u_sum[..., c] / n_r``; 0 for empty regions."""
    _check_stats(u_sum, count)
    _check_class_vector("prior", prior, u_sum.shape[-1])
    if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not math.isfinite(nu) or nu < 0:
        raise ValueError(f"{OP}: `nu` must be a finite number >= 0, got {nu!r}")
    _check_distribution("prior", prior)
    w = (1.0 + float(nu) * prior.to(device=u_sum.device, dtype=torch.float32)).pow(-2)
    n = region_size(count)
    total = (u_sum.to(torch.float32) * w).sum(dim=-1)
    return torch.where(n > 0, total / n.clamp(min=1).to(torch.float32), torch.zeros_like(total))


def dominant_class_fraction(dominant: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ClassBal's ``p_c``: the fraction of (non-empty) pool regions whose dominant predicted
    class is c, float32 ``(num_classes,)``; entries ``-1`` (empty regions) are not counted."""
    if not isinstance(dominant, torch.Tensor) or dominant.is_floating_point():
        raise TypeError("dominant_class_fraction: `dominant` must be an integer tensor of class ids")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0:
        raise ValueError(f"dominant_class_fraction: `num_classes` must be a positive int, got {num_classes!r}")
    d = dominant.reshape(-1).long()
    d = d[d >= 0]
    if d.numel() and int(d.max()) >= num_classes:
        raise ValueError(f"dominant_class_fraction: `dominant` holds class {int(d.max())} but num_classes={num_classes}")
    hist = torch.bincount(d, minlength=num_classes).to(torch.float32)
    return hist / max(d.numel(), 1)


def classbal_scores(u_sum: torch.Tensor, count: torch.Tensor, dominant_fraction: torch.Tensor) -> torch.Tensor:
    """ClassBal (Cai et al., 2021): ``exp(−p_dom(r)) · mean u``; 0 for empty regions."""
    mean_u = mean_uncertainty(u_sum, count)
    _check_class_vector("dominant_fraction", dominant_fraction, u_sum.shape[-1])
    dom = dominant_class(count)
    p_dom = dominant_fraction.to(device=u_sum.device, dtype=torch.float32)[dom.clamp(min=0)]
    return torch.where(dom >= 0, torch.exp(-p_dom) * mean_u, torch.zeros_like(mean_u))


def random_scores(shape, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniform scores in ``(0, 1]`` (so excluded regions, scored 0, sort last), drawn on the
    generator's device and moved to ``device``."""
    draw_on = generator.device if generator is not None else device
    scores = 1.0 - torch.rand(shape, generator=generator, device=draw_on)
    return scores if device is None else scores.to(device)


@dataclass(frozen=True)
class ScoreInputs:
    """What a scoring function may use beside the region statistics (see :func:`region_scores`)."""

    prior: torch.Tensor | None = None
    nu: float = 6.0
    dominant_fraction: torch.Tensor | None = None
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class Acquisition:
    """One acquisition function: ``score(u_sum, count, inputs) -> (..., R)`` scores (larger:
    query first), the pixel ``measure`` of :func:`region_uncertainty_stats` it scores with,
    whether it needs a model (a pool scan) and the pool-wide class prior P(c), and ``summary``
    (one line for ``--help`` and the docs)."""

    score: Callable[[torch.Tensor, torch.Tensor, ScoreInputs], torch.Tensor]
    measure: str = "bvsb"
    needs_model: bool = True
    needs_prior: bool = False
    summary: str = ""


def _random(u_sum, count, inputs: ScoreInputs):
    return random_scores(u_sum.shape[:-1], generator=inputs.generator, device=u_sum.device)


def _pixbal(u_sum, count, inputs: ScoreInputs):
    return pixbal_scores(u_sum, count, inputs.prior, inputs.nu)


def _classbal(u_sum, count, inputs: ScoreInputs):
    fraction = inputs.dominant_fraction
    if fraction is None:
        fraction = dominant_class_fraction(dominant_class(count), u_sum.shape[-1])
    return classbal_scores(u_sum, count, fraction)


def _mean(u_sum, count, inputs: ScoreInputs):
    return mean_uncertainty(u_sum, count)


KNN_NEIGHBOURS = 10
KNN_REFERENCES = 4096


def knn_density_scores(u_sum: torch.Tensor, count: torch.Tensor, k: int = KNN_NEIGHBOURS,
                       max_references: int = KNN_REFERENCES) -> torch.Tensor:
    """KNN baseline (paper Fig. 13): uncertainty weighted by k-nearest-neighbour density.

    The paper names this baseline without defining it. We use the k-nearest-neighbour density
    of *sampling by uncertainty and density* (Zhu et al., "Active Learning with Sampling by
    Uncertainty and Density for Word Sense Disambiguation and Text Classification", COLING
    2008), the usual density-weighted form of a KNN acquisition, on regions::

        score(r) = mean u(r) · (1/k) Σ_{r' ∈ kNN(r)} cos(q_r, q_r')

    where ``q_r = count[r] / n_r`` is the region's predicted class composition (its top-1 class
    histogram from :func:`region_uncertainty_stats`, the only per-region description the
    one-pass scan keeps) and the neighbours are the ``k`` most similar other non-empty regions
    among a reference set: every non-empty region, or ``max_references`` of them taken at an
    even stride when there are more (so the cost stays ``O(N · max_references)``). A region
    typical of the pool (high density) and uncertain is queried first; a region with no other
    reference has density 1. Empty regions score 0.
    """
    _check_stats(u_sum, count)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{OP}: `k` must be a positive int, got {k!r}")
    mean_u = mean_uncertainty(u_sum, count)
    C = count.shape[-1]
    q = count.reshape(-1, C).to(torch.float32)
    q = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)  # cosine of compositions = cosine of counts
    nonempty = torch.nonzero(count.reshape(-1, C).sum(dim=1) > 0).flatten()
    ref = nonempty
    if len(ref) > max_references:
        ref = ref[torch.linspace(0, len(ref) - 1, max_references, device=ref.device).round().long()]
    density = torch.ones(q.shape[0], dtype=torch.float32, device=q.device)
    kk = min(k, len(ref) - 1)
    if kk >= 1:
        refs = q[ref]
        position = torch.full((q.shape[0],), -1, dtype=torch.int64, device=q.device)
        position[ref] = torch.arange(len(ref), device=q.device)
        for lo in range(0, len(nonempty), 4096):
            rows = nonempty[lo:lo + 4096]
            sim = q[rows] @ refs.T
            own = position[rows]
            mine = own >= 0  # a reference is not its own neighbour
            sim[torch.nonzero(mine).flatten(), own[mine]] = -math.inf
            density[rows] = sim.topk(kk, dim=1).values.mean(dim=1)
    return mean_u * density.reshape(mean_u.shape)


def _knn(u_sum, count, inputs: ScoreInputs):
    return knn_density_scores(u_sum, count)


# The registry: name -> acquisition function. Order = order of the --acquisition choices.
ACQUISITIONS: dict[str, Acquisition] = {
    "random": Acquisition(_random, needs_model=False, summary="uniform scores, seeded by (seed, round); no model"),
    "bvsb": Acquisition(_mean, summary="region mean of p_sb / p_b (best versus second best)"),
    "margin": Acquisition(_mean, measure="margin", summary="region mean of 1 - (p_b - p_sb)"),
    "entropy": Acquisition(_mean, measure="entropy", summary="region mean of the prediction entropy"),
    "least_confidence": Acquisition(_mean, measure="least_confidence", summary="region mean of 1 - p_b"),
    "classbal": Acquisition(_classbal, summary="exp(-p_dom) x mean BvSB (Cai et al. 2021)"),
    "pixbal": Acquisition(_pixbal, needs_prior=True,
                          summary="BvSB weighted by (1 + nu P(c_b))^-2, Eq. (4) (the paper's)"),
    "knn": Acquisition(_knn, summary="mean BvSB x k-nearest-neighbour density of the class composition "
                                     "(Fig. 13 baseline; Zhu et al. 2008)"),
}
ACQUISITION_METHODS = tuple(ACQUISITIONS)


def acquisition(method: str) -> Acquisition:
    """The registry entry of ``method``; :class:`ValueError` naming the choices otherwise."""
    _check_method(method)
    return ACQUISITIONS[method]


def measure_for(method: str) -> str:
    """The ``measure`` of :func:`region_uncertainty_stats` that ``method`` scores with."""
    return acquisition(method).measure


def region_scores(method: str, u_sum: torch.Tensor, count: torch.Tensor, *, prior: torch.Tensor | None = None,
                  nu: float = 6.0, dominant_fraction: torch.Tensor | None = None, undefined_class: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Acquisition score ``(..., R)`` float32 of every region for ``method``.

    Args:
        method: a name of :data:`ACQUISITIONS` (``"random" | "bvsb" | "margin" | "entropy" |
            "least_confidence" | "classbal" | "pixbal" | "knn"``).
        u_sum, count: ``(..., R, C)`` from :func:`region_uncertainty_stats` (computed with
            ``measure=measure_for(method)``), stacked over the pool images.
        prior: P(c) ``(C,)`` for methods that need it (``"pixbal"``; :func:`class_prior` over
            the whole pool).
        nu: PixBal's ν (6 for Cityscapes, 12 for VOC in the paper).
        dominant_fraction: ClassBal's ``(C,)`` class fractions; ``None`` computes them from
            ``count`` (i.e. treats the regions passed in as the pool).
        undefined_class: regions whose dominant predicted class is this one score 0.
        generator: for ``"random"``.

    Empty regions and undefined-dominant regions score exactly 0 (see :func:`selectable`).

    Example:
        >>> import torch
        >>> from mulact.ops import region_uncertainty_stats
        >>> logits = torch.randn(2, 20, 32, 32)
        >>> regions = torch.randint(0, 16, (2, 32, 32))
        >>> stats = region_uncertainty_stats(logits, regions, 16, temperature=0.1, measure=measure_for("pixbal"))
        >>> prior = class_prior(stats.prob_sum, stats.num_pixels)
        >>> region_scores("pixbal", stats.u_sum, stats.count, prior=prior, nu=6.0, undefined_class=19).shape
        torch.Size([2, 16])
    """
    entry = acquisition(method)
    _check_stats(u_sum, count)
    C = u_sum.shape[-1]
    if undefined_class is not None and (isinstance(undefined_class, bool) or not isinstance(undefined_class, int)
                                        or not 0 <= undefined_class < C):
        raise ValueError(f"{OP}: `undefined_class` must be None or an int in [0, {C}), got {undefined_class!r}")
    if entry.needs_prior and prior is None:
        raise ValueError(f"{OP}: method {method!r} needs `prior` (class_prior over the whole pool)")
    scores = entry.score(u_sum, count, ScoreInputs(prior, nu, dominant_fraction, generator))
    return torch.where(selectable(count, undefined_class), scores, torch.zeros_like(scores))


class PoolStatistics:
    """Collects :class:`RegionUncertaintyStats` of pool batches for one acquisition round.

    Keeps the per-image ``(R, C)`` statistics on the CPU (padding images with fewer regions
    with empty regions) and the pool-wide softmax sum for P(c)."""

    def __init__(self) -> None:
        self._u: list[torch.Tensor] = []
        self._n: list[torch.Tensor] = []
        self.prob_sum: torch.Tensor | None = None
        self.num_pixels = 0
        self.classes: int | None = None

    def update(self, stats, keep: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Add one batch; returns its ``(u_sum, count)`` on the CPU. ``keep=False`` adds only
        the pool-wide sums (P(c)) and leaves the per-image tables to the caller (the AL loop
        keeps them in its flat pool layout)."""
        u, n = stats.u_sum.detach().cpu(), stats.count.detach().cpu()
        if self.classes is not None and u.shape[-1] != self.classes:
            raise ValueError(f"PoolStatistics.update: batches disagree on the number of classes "
                             f"({u.shape[-1]} vs {self.classes})")
        self.classes = u.shape[-1]
        if keep:
            self._u.append(u)
            self._n.append(n)
        p = stats.prob_sum.detach().cpu().to(torch.float64)
        self.prob_sum = p if self.prob_sum is None else self.prob_sum + p
        self.num_pixels += int(stats.num_pixels)
        return u, n

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u_sum, count)`` of shape ``(num_images, R_max, C)``."""
        if not self._u:
            raise ValueError("PoolStatistics: no batch was added")
        r_max = max(u.shape[1] for u in self._u)
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, r_max - t.shape[1]))  # noqa: E731
        return torch.cat([pad(u) for u in self._u]), torch.cat([pad(n) for n in self._n])

    def prior(self) -> torch.Tensor:
        if self.prob_sum is None:
            raise ValueError("PoolStatistics: no batch was added")
        return class_prior(self.prob_sum, self.num_pixels)

    def selectable(self, undefined_class: int | None = None) -> torch.Tensor:
        return selectable(self.stacked()[1], undefined_class)

    def scores(self, method: str, **kwargs) -> torch.Tensor:
        """``region_scores(method, ...)`` over the whole pool, ``(num_images, R_max)``."""
        u, n = self.stacked()
        if acquisition(method).needs_prior and kwargs.get("prior") is None:
            kwargs["prior"] = self.prior()
        return region_scores(method, u, n, **kwargs)
