import os

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when no GPU is present. The flag
# must be set before any @triton.jit function is created, i.e. before mulact.kernels loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The model runs in float32 on the CPU in tests, whatever the processor: several tests compare
# training numerics across process counts, resumes and compilation at float32 tolerances, and
# CI machines differ in native bfloat16 support (mulact.engine.precision). Child processes
# inherit the setting. test_precision.py and the bfloat16 loop test opt back in.
os.environ.setdefault("MULACT_CPU_AMP", "0")

# No skips: a backend that cannot run here (extension not built, triton missing) must fail
# the suite rather than hide behind a skip.
BACKEND_PARAMS = ["reference", "cpp", "triton"]


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def _no_status_leaks_between_tests():
    """A CUDA kernel's status is checked later (at the next launch or ``check_status``): a test
    that leaves one queued would make the *next* test raise its error. Drop them after each
    test; tests that expect an error check it themselves (``_util.raises_status``)."""
    yield
    from mulact.ops import _status

    _status.discard()
