"""Every op is a torch.library custom op (``torch.ops.mulact.<op>``) that passes
``torch.library.opcheck`` (schema, fake/meta shapes, autograd registration, AOT dispatch) for
each dtype it accepts, on the C++ kernel and on the Triton kernel (interpreter)."""
import pytest
import torch
from _partial_labels import make_case
from _util import backend_device

from mulact import ops

FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PUBLIC_OPS = ["region_reduce", "region_uncertainty_stats", "partial_label_loss", "region_class_argmax",
              "prototypical_pixel_loss", "prototype_pseudo_labels", "region_adjacency", "region_labels_from_mask"]
# opcheck runs each op several times: the Triton interpreter gets float32 only (its dtype
# handling is covered by each op's own tests)
CASES = [(b, d) for b in ("cpp", "triton") for d in FLOATS if b == "cpp" or d == torch.float32]


ALL_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def _opcheck(op, args, grad=False, utils=ALL_UTILS):
    # test_autograd_registration needs an input that requires grad to mean anything
    result = torch.library.opcheck(op, args, test_utils=utils, raise_exception=True)
    assert all(v == "SUCCESS" for v in result.values()), result
    if grad:
        assert args[0].requires_grad


def test_every_public_op_is_registered():
    for name in PUBLIC_OPS:
        assert isinstance(getattr(torch.ops.mulact, name), torch._ops.OpOverloadPacket), name
        assert hasattr(ops, name)


def _case(dtype, backend, grad=False):
    """Inputs on the backend's device: Triton on CUDA when present, else the interpreter."""
    dev = backend_device(backend)
    logits, regions, labels = make_case(2, 4, 5, 6, 5, seed=3, label_sizes=(0, 1, 2, 3), device=dev)
    logits = logits.to(dtype)
    if grad:
        logits.requires_grad_(True)
    return logits, regions, labels


@pytest.mark.parametrize("backend,dtype", CASES)
@pytest.mark.parametrize("reduce", ["sum", "mean", "max", "min", "count", "argmax"])
def test_opcheck_region_reduce(backend, dtype, reduce):
    logits, regions, _ = _case(dtype, backend, grad=reduce in ("sum", "mean", "max", "min"))
    _opcheck(torch.ops.mulact.region_reduce.default, (logits, regions, 5, reduce, backend))


@pytest.mark.parametrize("backend,dtype", CASES)
def test_opcheck_region_reduce_backward(backend, dtype):
    _, regions, _ = _case(dtype, backend)
    grad = torch.randn(2, 5, 3, dtype=dtype, device=regions.device)
    count = ops.region_reduce(torch.zeros(2, 5, 6, device=regions.device), regions, 5, "count", backend=backend)
    _opcheck(torch.ops.mulact.region_reduce_backward.default, (grad, regions, count, "mean", backend))


@pytest.mark.parametrize("backend,dtype", CASES)
@pytest.mark.parametrize("measure", ["bvsb", "entropy"])
def test_opcheck_region_uncertainty_stats(backend, dtype, measure):
    logits, regions, _ = _case(dtype, backend)
    _opcheck(torch.ops.mulact.region_uncertainty_stats.default, (logits, regions, 5, 0.5, measure, backend))


@pytest.mark.parametrize("backend,dtype", CASES)
@pytest.mark.parametrize("normalize", ["pixel", "region"])
def test_opcheck_partial_label_loss(backend, dtype, normalize):
    logits, regions, labels = _case(dtype, backend, grad=True)
    _opcheck(torch.ops.mulact.partial_label_loss.default, (logits, regions, labels, 0.5, normalize, backend), True)


@pytest.mark.parametrize("backend,dtype", CASES)
def test_opcheck_partial_label_loss_backward(backend, dtype):
    logits, regions, labels = _case(dtype, backend)
    scale = torch.rand(2, 5, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=logits.device)
    scale = scale * labels.any(-1)  # as the forward's autograd makes it: unlabeled regions get 0
    _opcheck(torch.ops.mulact.partial_label_loss_backward.default, (logits, regions, labels, scale, 0.5, backend))


@pytest.mark.parametrize("backend,dtype", CASES)
def test_opcheck_region_class_argmax(backend, dtype):
    logits, regions, labels = _case(dtype, backend)
    _opcheck(torch.ops.mulact.region_class_argmax.default, (logits, regions, labels, 0.5, 1, backend))


@pytest.mark.parametrize("backend,dtype", CASES)
@pytest.mark.parametrize("normalize", ["pair", "region"])
def test_opcheck_prototypical_pixel_loss(backend, dtype, normalize):
    logits, regions, labels = _case(dtype, backend, grad=True)
    _opcheck(torch.ops.mulact.prototypical_pixel_loss.default, (logits, regions, labels, 0.5, normalize, backend),
             True)


@pytest.mark.parametrize("backend,dtype", CASES)
def test_opcheck_prototype_pseudo_labels(backend, dtype):
    logits, regions, labels = _case(dtype, backend)
    features = torch.randn(2, 3, 3, 3, dtype=dtype, device=logits.device)
    args = (features, logits, regions, labels, True, 0.5, backend)
    # The thresholds are NaN where there is no prototype (the contract), and the AOT check
    # compares with NaN != NaN: run it on the outputs without NaN instead.
    _opcheck(torch.ops.mulact.prototype_pseudo_labels.default, args, utils=ALL_UTILS[:3])
    eager = torch.ops.mulact.prototype_pseudo_labels(*args)
    compiled = torch.compile(torch.ops.mulact.prototype_pseudo_labels, backend="aot_eager", fullgraph=True,
                             dynamic=True)(*args)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_opcheck_region_adjacency(backend, dtype):
    _, regions, _ = _case(torch.float32, backend)
    _opcheck(torch.ops.mulact.region_adjacency.default, (regions.to(dtype), 5, backend))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_opcheck_region_labels_from_mask(backend, dtype):
    _, regions, _ = _case(torch.float32, backend)
    gt = torch.randint(0, 4, regions.shape, device=regions.device)
    gt[0, 0, :3] = 255
    _opcheck(torch.ops.mulact.region_labels_from_mask.default, (gt.to(dtype), regions, 5, 4, 255, 1, backend))


def test_registered_op_refuses_a_backend_that_cannot_run(monkeypatch):
    """``torch.ops.mulact.*`` called directly (no resolve_backend): a clear error naming the op
    and the reason, not a kernel's pointer error."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    logits, regions, _ = _case(torch.float32, "cpp")
    with pytest.raises(RuntimeError, match=r"region_reduce: backend 'triton' cannot run: .*CUDA tensor"):
        torch.ops.mulact.region_reduce(logits, regions, 5, "sum", "triton")
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"region_uncertainty_stats: backend 'cpp' cannot run: .*CPU tensors only"):
            torch.ops.mulact.region_uncertainty_stats(logits.cuda(), regions.cuda(), 5, 0.5, "bvsb", "cpp")


# issue 18: one op skeleton. Every registered op picks its kernel through a LaunchTable
# (mulact/ops/_backend.py); none spells its own table, dict or if/else over backend names.
def _registered_ops_args():
    logits, regions, labels = _case(torch.float32, "cpp")
    gt = torch.randint(0, 4, regions.shape)
    features = torch.randn(2, 3, 3, 3)
    grad = torch.randn(2, 5, 3)
    count = torch.ones(2, 5, dtype=torch.int64)
    scale = torch.rand(2, 5)
    return {
        "region_reduce": (logits, regions, 5, "sum"),
        "region_reduce_backward": (grad, regions, count, "mean"),
        "region_uncertainty_stats": (logits, regions, 5, 0.5, "bvsb"),
        "partial_label_loss": (logits, regions, labels, 0.5, "pixel"),
        "partial_label_loss_backward": (logits, regions, labels, scale, 0.5),
        "region_class_argmax": (logits, regions, labels, 0.5, 1),
        "prototype_pseudo_labels": (features, logits, regions, labels, True, 0.5),
        "region_adjacency": (regions, 5),
        "region_labels_from_mask": (gt, regions, 5, 4, 255, 1),
        "partial_label_loss_grad_in_forward": (logits, regions, labels, 0.5, "pixel"),
        "prototype_cross_entropy": (logits, torch.zeros(2, 5, 4, dtype=torch.int64), 0.5, "pixel"),
        "prototype_cross_entropy_backward": (logits, torch.zeros(2, 5, 4, dtype=torch.int64), torch.ones(()), 0.5,
                                             "pixel"),
    }


# the registered ops that exist for a Triton-only design (kernels/_tuning.py DESIGNS)
TRITON_ONLY = {"partial_label_loss_grad_in_forward", "prototype_cross_entropy", "prototype_cross_entropy_backward"}


def test_every_registered_op_is_listed():
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("mulact::")}
    composites = {"prototypical_pixel_loss"}  # CompositeImplicitAutograd over the ops below: no kernel of its own
    assert registered == set(_registered_ops_args()) | composites


@pytest.mark.parametrize("name", list(_registered_ops_args()))
def test_every_registered_op_dispatches_through_its_launch_table(name, monkeypatch):
    args = _registered_ops_args()[name]
    op = getattr(torch.ops.mulact, name)
    with pytest.raises(RuntimeError, match=r"backend 'reference' has no fused kernel; expected one of cpp, triton"):
        op(*args, "reference")
    if name in TRITON_ONLY:
        with pytest.raises(RuntimeError, match=r"design '\w+' has no cpp kernel; it runs on triton"):
            op(*args, "cpp")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"backend 'triton' cannot run: .*TRITON_INTERPRET=1"):
        op(*args, "triton")


def test_no_op_module_spells_its_own_dispatch():
    import ast
    import pathlib

    from mulact.ops import _backend

    root = pathlib.Path(ops.__file__).parent
    tables = 0
    for path in sorted(root.glob("*.py")):
        if path.name == "_backend.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                assert not keys & set(_backend.FUSED), f"{path.name}:{node.lineno}: a dict keyed by backend"
            if isinstance(node, ast.Compare):
                consts = {c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)}
                assert not consts & set(_backend.FUSED), f"{path.name}:{node.lineno}: a comparison with a backend"
            if isinstance(node, ast.Name) and node.id == "check_launch":
                raise AssertionError(f"{path.name}:{node.lineno}: check_launch outside LaunchTable")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LaunchTable":
                tables += 1
    # one per registered kernel entry (forward and backward count apart; the Triton-only designs
    # share one table per design), plus partial_label_loss's region pixel counts
    assert tables == 12
    with pytest.raises(TypeError, match="expected one launcher for each of cpp, triton, got cpp"):
        _backend.LaunchTable("probe", cpp=len)
    with pytest.raises(TypeError, match="expected launchers for some of cpp, triton, got none"):
        _backend.LaunchTable("probe", design="d")
    table = _backend.LaunchTable("probe", design="d", triton=len)
    assert table.covers("triton") and not table.covers("cpp")
    with pytest.raises(RuntimeError, match="probe: design 'd' has no cpp kernel; it runs on triton"):
        table.launcher("cpp", torch.zeros(1))
