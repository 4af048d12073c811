"""Every docstring example of the package runs (issue 18: examples cannot rot). Each module
with examples is one test; its examples share the module's globals, as ``python -m doctest``
would run them."""
import doctest
import importlib
import pkgutil

import pytest

import mulact


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(mulact.__path__, "mulact."):
        module = importlib.import_module(info.name)
        if any(t.examples for t in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_ops_and_public_modules_have_examples():
    for name in ("mulact.ops.partial_label_loss", "mulact.ops.prototypical_pixel_loss",
                 "mulact.ops.region_class_argmax", "mulact.ops.region_uncertainty_stats",
                 "mulact.ops.region_reduce", "mulact.data.superpixels"):
        assert name in MODULES, name


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(out)
