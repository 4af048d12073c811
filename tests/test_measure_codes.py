"""The pixel-measure codes of the statistics op are defined once, in
``mulact.ops.region_uncertainty_stats.MEASURE_CODES``; the C++ and Triton kernels keep copies
(issue 18). A copy that drifts would make a backend compute another measure than asked."""
import pathlib
import re

import torch

from mulact.ops import region_uncertainty_stats
from mulact.ops.region_uncertainty_stats import MEASURE_CODES, MEASURES

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _snake(cpp_name: str) -> str:
    """kLeastConfidence -> least_confidence."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cpp_name[1:]).lower()


def test_python_table_is_the_measure_list():
    assert MEASURES == tuple(MEASURE_CODES) == ("bvsb", "margin", "entropy", "least_confidence")
    assert sorted(MEASURE_CODES.values()) == list(range(len(MEASURE_CODES)))


def test_cpp_enum_matches():
    src = (ROOT / "csrc" / "region_uncertainty_stats.cpp").read_text()
    enum = re.search(r"enum\s+Measure\s*:\s*int\s*\{([^}]*)\}", src)
    assert enum, "enum Measure not found in csrc/region_uncertainty_stats.cpp"
    codes = {_snake(name): int(value) for name, value in re.findall(r"(k\w+)\s*=\s*(\d+)", enum.group(1))}
    assert codes == MEASURE_CODES


def test_triton_table_matches():
    from mulact.kernels import region_uncertainty_stats as kern

    assert kern.MEASURE_CODES == MEASURE_CODES


def test_every_backend_computes_the_measure_it_is_asked_for(backend):
    # a swapped code would give another measure's numbers: compare each with its formula
    logits = torch.tensor([[[[2.0]], [[1.0]], [[0.0]]]])  # one pixel, three classes
    regions = torch.zeros(1, 1, 1, dtype=torch.int64)
    p = torch.softmax(logits[0, :, 0, 0].double(), 0)
    expected = {"bvsb": p[1] / p[0], "margin": 1 - (p[0] - p[1]), "entropy": -(p * p.log()).sum(),
                "least_confidence": 1 - p[0]}
    for measure in MEASURES:
        st = region_uncertainty_stats(logits, regions, 1, temperature=1.0, measure=measure, backend=backend)
        torch.testing.assert_close(st.u_sum[0, 0, 0].double(), expected[measure], rtol=1e-5, atol=1e-6)
