"""The stage-1 training step and the acquisition step under ``torch.compile(fullgraph=True)``
on the CPU: same results as eager, no graph break, and the fused ops (not a fallback) in the
graph. The model steps compile with the ``aot_eager`` backend: it runs everything the ops take
part in (dynamo capture, their fake kernels, AOT autograd with the registered backward,
functionalisation) but not inductor's C++ code generation for the model's convolutions, which
takes minutes on a 2-core machine and is torch's own business. Inductor itself is exercised on
the loss and acquisition graphs without the model. The model is the tests' smallest (ResNet-18
encoder, 16 decoder channels) on 32×32 crops."""
import copy

import torch
import torch._dynamo

from mulact import ops
from mulact.model import build_model

C, R, TAU = 4, 6, 0.1


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 32, 32, generator=g)
    regions = torch.randint(0, R, (2, 32, 32), generator=g)
    regions[:, :2] = -1
    labels = torch.zeros(2, R, C + 1, dtype=torch.bool)
    labels[:, 0, 1] = True
    labels[:, 1, [0, 2]] = True
    labels[:, 2, [1, 3, 4]] = True
    labels[1, 3, 2] = True
    return x, regions, labels


class _Recorder:
    """A dynamo backend that keeps the FX graphs it is given and compiles them with ``inner``."""

    def __init__(self, inner="aot_eager"):
        self.graphs = []
        self.inner = torch._dynamo.lookup_backend(inner)

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return self.inner(gm, example_inputs)

    def code(self):
        return "\n".join(g.code for g in self.graphs)


def _train_step(model, x, regions, labels):
    logits = model(x)
    ce, mp = ops.partial_label_loss(logits, regions, labels, temperature=TAU)
    pp = ops.prototypical_pixel_loss(logits, regions, labels, temperature=TAU)
    return 16 * ce + 8 * mp + pp, ce, mp, pp


def _acquisition_step(model, x, regions):
    with torch.no_grad():
        logits = model(x)
        stats = ops.region_uncertainty_stats(logits, regions, R, temperature=TAU)
        prior = ops.class_prior(stats.prob_sum, stats.num_pixels)
        return ops.region_scores("pixbal", stats.u_sum, stats.count, prior=prior, nu=6.0, undefined_class=C), stats


def test_training_step_compiled_matches_eager_without_graph_break():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager_model = build_model(C, "resnet18", None, decoder_channels=16, seed=0).train()
    for m in eager_model.modules():  # the ASPP's dropout would draw different masks in the two runs
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    compiled_model = copy.deepcopy(eager_model)
    x, regions, labels = _batch()
    recorder = _Recorder()
    step = torch.compile(_train_step, backend=recorder, fullgraph=True)  # fullgraph: a break raises

    loss_e, *parts_e = _train_step(eager_model, x, regions, labels)
    loss_c, *parts_c = step(compiled_model, x, regions, labels)
    loss_e.backward()
    loss_c.backward()

    assert not torch._dynamo.utils.counters["graph_break"]
    assert "mulact.partial_label_loss" in recorder.code()
    assert "mulact.prototypical_pixel_loss" in recorder.code()
    assert float(parts_e[1].detach()) > 0 and float(parts_e[2].detach()) > 0  # every term is exercised
    for c, e in zip([loss_c, *parts_c], [loss_e, *parts_e]):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)
    grads = [(pc.grad, pe.grad) for pc, pe in zip(compiled_model.parameters(), eager_model.parameters())]
    assert all(gc is not None for gc, _ in grads)
    for gc, ge in grads:
        torch.testing.assert_close(gc, ge, rtol=1e-3, atol=1e-4)


def test_acquisition_step_compiled_matches_eager_without_graph_break():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = build_model(C, "resnet18", None, decoder_channels=16, seed=1).eval()
    x, regions, _ = _batch(1)
    recorder = _Recorder()
    step = torch.compile(_acquisition_step, backend=recorder, fullgraph=True)

    scores_e, stats_e = _acquisition_step(model, x, regions)
    scores_c, stats_c = step(model, x, regions)

    assert not torch._dynamo.utils.counters["graph_break"]
    assert "mulact.region_uncertainty_stats" in recorder.code()
    assert scores_e.shape == (2, R) and bool((scores_e > 0).any())
    torch.testing.assert_close(stats_c.count, stats_e.count, rtol=0, atol=0)
    torch.testing.assert_close(stats_c.num_pixels, stats_e.num_pixels, rtol=0, atol=0)
    torch.testing.assert_close(stats_c.u_sum, stats_e.u_sum, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores_c, scores_e, rtol=1e-4, atol=1e-6)


def _loss_step(logits, regions, labels):
    ce, mp = ops.partial_label_loss(logits, regions, labels, temperature=TAU)
    pp = ops.prototypical_pixel_loss(logits, regions, labels, temperature=TAU)
    stats = ops.region_uncertainty_stats(logits.detach(), regions, R, temperature=TAU)
    prior = ops.class_prior(stats.prob_sum, stats.num_pixels)
    scores = ops.region_scores("pixbal", stats.u_sum, stats.count, prior=prior, nu=6.0)
    return 16 * ce + 8 * mp + pp, scores


def test_losses_and_scores_under_inductor_match_eager():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    _, regions, labels = _batch(2)
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, C + 1, 32, 32, generator=g, dtype=torch.float64).requires_grad_(True)
    recorder = _Recorder("inductor")
    step = torch.compile(_loss_step, backend=recorder, fullgraph=True)

    loss_e, scores_e = _loss_step(logits, regions, labels)
    (grad_e,) = torch.autograd.grad(loss_e, logits)
    loss_c, scores_c = step(logits, regions, labels)
    (grad_c,) = torch.autograd.grad(loss_c, logits)

    assert not torch._dynamo.utils.counters["graph_break"]
    for name in ("partial_label_loss", "prototypical_pixel_loss", "region_uncertainty_stats"):
        assert f"mulact.{name}" in recorder.code()
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(grad_c, grad_e)
    torch.testing.assert_close(scores_c, scores_e)
