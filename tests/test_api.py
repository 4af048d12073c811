"""API rules checked from the code itself: one temperature rule for every op that takes
logits, and ``kernels/`` as a leaf package (it imports nothing of ``mulact.ops``)."""
import ast
import inspect
import pathlib

import pytest

from mulact import ops

TAKES_LOGITS = sorted(
    name for name in ops.__all__
    if inspect.isfunction(getattr(ops, name)) and "logits" in inspect.signature(getattr(ops, name)).parameters
)


def test_the_ops_that_take_logits_are_found():
    # guard the discovery below: the ops the rule is about are really in the list
    for name in ("partial_label_loss", "prototypical_pixel_loss", "region_class_argmax", "region_uncertainty_stats",
                 "prototype_pseudo_labels", "pseudo_labels_without_prototypes", "region_class_argmax_reference"):
        assert name in TAKES_LOGITS


@pytest.mark.parametrize("name", TAKES_LOGITS)
def test_temperature_is_required(name):
    """docs/design.md, "Temperature": no op has a default τ; a caller always states it."""
    param = inspect.signature(getattr(ops, name)).parameters.get("temperature")
    assert param is not None, f"{name} takes logits but no temperature"
    assert param.default is inspect.Parameter.empty, f"{name} has temperature={param.default!r}"


@pytest.mark.parametrize("name", TAKES_LOGITS)
def test_omitting_temperature_is_a_type_error(name):
    params = inspect.signature(getattr(ops, name)).parameters.values()
    others = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
              and p.name != "temperature"]
    with pytest.raises(TypeError, match="missing 1 required .*argument: 'temperature'"):
        getattr(ops, name)(*([None] * len(others)))


def test_kernels_import_nothing_from_mulact_ops():
    root = pathlib.Path(__file__).resolve().parents[1] / "kernels"
    files = sorted(root.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for mod in names:
                assert not mod.startswith("mulact"), f"{path.name} imports {mod}"
