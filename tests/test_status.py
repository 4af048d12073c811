"""Status checks of the fused kernels: immediate on the CPU, deferred (no host sync) on CUDA.

The CUDA path is exercised on the CPU by routing CPU statuses through it
(``_status.defer_on_cpu``), with the Triton kernels under the interpreter and the C++ ones.
With a GPU, the same calls run under ``torch.cuda.set_sync_debug_mode("error")``."""
import pytest
import torch
from _partial_labels import make_case
from _util import backend_device, raises_status

from mulact import ops
from mulact.ops import _status

CALLS = {
    "partial_label_loss": lambda lg, rg, lb, be: ops.partial_label_loss(lg, rg, lb, temperature=0.5, backend=be),
    "prototypical_pixel_loss": lambda lg, rg, lb, be: ops.prototypical_pixel_loss(lg, rg, lb, temperature=0.5,
                                                                                  backend=be),
    "region_class_argmax": lambda lg, rg, lb, be: ops.region_class_argmax(lg, rg, lb, temperature=0.5, backend=be),
    "region_uncertainty_stats": lambda lg, rg, lb, be: ops.region_uncertainty_stats(lg, rg, lb.shape[1],
                                                                                    temperature=0.5, backend=be),
    "region_reduce": lambda lg, rg, lb, be: ops.region_reduce(lg, rg, lb.shape[1], "mean", backend=be),
}
# the op whose kernel reports (the PP loss runs the argmax kernel)
REPORTER = {"prototypical_pixel_loss": "region_class_argmax"}


@pytest.fixture
def deferred():
    old = _status.defer_on_cpu(True)
    yield
    _status.defer_on_cpu(old)
    _status.discard()


def _bad_id_case(backend):
    logits, regions, labels = make_case(1, 3, 4, 5, 4, seed=1, label_sizes=(1, 2), device=backend_device(backend))
    regions[0, 1, 2] = 7  # >= R = 4
    return logits, regions, labels


def _nan_case(backend):
    logits, regions, labels = make_case(1, 3, 4, 5, 4, seed=1, label_sizes=(1, 2), negative=False,
                                        device=backend_device(backend))
    logits[0, 1, 2, 3] = float("nan")
    return logits.float(), regions, labels


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_cpu_status_raises_at_the_call(backend, name):
    """On the CPU the call itself raises (with a GPU, Triton runs on CUDA: the error comes at
    the next check, as in the deferred tests below)."""
    logits, regions, labels = _bad_id_case(backend)
    with raises_status(r"`regions` holds id 7 but num_regions=4"):
        CALLS[name](logits.float(), regions, labels, backend)
        if logits.device.type == "cpu":
            assert _status.pending() == 0  # nothing queued: raised before this line
    assert _status.pending() == 0


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_deferred_bad_id_surfaces_at_check_status(deferred, backend, name):
    logits, regions, labels = _bad_id_case(backend)
    CALLS[name](logits.float(), regions, labels, backend)  # no error, no read-back yet
    assert _status.pending() >= 1
    with pytest.raises(ValueError, match=rf"{REPORTER.get(name, name)}: `regions` holds id 7 but num_regions=4"):
        ops.check_status()
    assert _status.pending() == 0
    ops.check_status()  # reported once


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("name", ["partial_label_loss", "region_class_argmax", "region_uncertainty_stats"])
def test_deferred_nan_surfaces_at_the_next_launch(deferred, backend, name):
    logits, regions, labels = _nan_case(backend)
    CALLS[name](logits, regions, labels, backend)
    good, regions2, labels2 = make_case(1, 3, 4, 5, 4, seed=2, device=logits.device)
    if logits.device.type == "cuda":
        torch.cuda.synchronize()  # the earlier kernel has finished by the next launch
    # the next fused call finds the earlier kernel finished and raises its error
    with pytest.raises(ValueError, match=rf"{name}: `logits` contains NaN or Inf"):
        CALLS["region_uncertainty_stats"](good.float(), regions2, labels2, backend)


def test_deferred_good_inputs_leave_nothing_to_report(deferred):
    logits, regions, labels = make_case(2, 3, 4, 5, 4, seed=3)
    for call in CALLS.values():
        call(logits.float(), regions, labels, "cpp")
    ops.check_status()
    assert _status.pending() == 0


def test_cuda_calls_do_not_synchronise():
    """On a GPU: the fused hot-path ops under sync debug mode "error" (any implicit host sync
    raises), and the deferred check still catches a bad id. Without one: the deferred path
    must not read the status in the call (the status stays queued)."""
    if not torch.cuda.is_available():
        old = _status.defer_on_cpu(True)
        try:
            logits, regions, labels = make_case(2, 3, 4, 5, 4, seed=4)
            for call in CALLS.values():
                call(logits.float(), regions, labels, "triton")
                # queued, not read: an earlier (finished) one is checked at the next launch
                assert _status.pending() == 1
            ops.check_status()
        finally:
            _status.defer_on_cpu(old)
        return
    logits, regions, labels = make_case(2, 19, 64, 96, 40, seed=4, device="cuda")
    logits = logits.float().requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ce, mp = ops.partial_label_loss(logits, regions, labels, temperature=0.1)
        pp = ops.prototypical_pixel_loss(logits, regions, labels, temperature=0.1)
        (16 * ce + 8 * mp + pp).backward()
        st = ops.region_uncertainty_stats(logits.detach(), regions, 40, temperature=0.1)
        prior = ops.class_prior(st.prob_sum, st.num_pixels)
        ops.region_scores("pixbal", st.u_sum, st.count, prior=prior, nu=6.0)
        ops.region_reduce(logits.detach(), regions, 40, "mean")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ops.check_status()
    bad = regions.clone()
    bad[0, 0, 0] = 40
    ops.region_uncertainty_stats(logits.detach(), bad, 40, temperature=0.1)
    with pytest.raises(ValueError, match="holds id 40"):
        ops.check_status()
