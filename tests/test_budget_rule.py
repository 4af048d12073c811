"""The budget cut with unknown costs (human oracle) and the oracle seam's simulated side."""
import numpy as np
import pytest

from mulact.al.budget import select_by_budget
from mulact.al.labels import multi_hot_to_bits
from mulact.al.oracle import HumanOracle, SimulatedOracle, expected_classes_per_region
from mulact.al.oracle_table import OracleTable
from mulact.al.pool import RegionPool


def _pool(n=12, classes=4):
    return RegionPool(np.array([0, n // 2, n]), classes)


def test_expected_classes_is_the_prior_before_any_answer_then_the_mean_of_answers():
    pool = _pool()
    assert expected_classes_per_region(pool, 1.5) == 1.5
    mh = np.zeros((3, 5), bool)
    mh[0, [0]] = True
    mh[1, [0, 2]] = True
    mh[2, [1, 2, 4]] = True  # undefined (bit 4) is a click too
    bits = multi_hot_to_bits(mh)
    pool.add_round([1, 4, 7], bits, [1, 2, 3])
    assert expected_classes_per_region(pool, 1.5) == pytest.approx(2.0)
    assert expected_classes_per_region(pool, 9.0) == pytest.approx(2.0)  # the prior no longer counts


@pytest.mark.parametrize("budget, expected, taken", [
    (30, 1.5, 20),    # 20 x 1.5 = 30 reaches the budget exactly
    (31, 1.5, 21),    # the region that crosses the budget is still taken (as with known costs)
    (10, 2.5, 4),
    (1, 3.0, 1),
])
def test_select_in_score_order_until_expected_cost_reaches_budget(budget, expected, taken):
    rng = np.random.default_rng(0)
    scores = rng.random(100)
    chosen = select_by_budget(scores, np.ones(100, bool), np.full(100, expected), budget)
    assert len(chosen) == taken
    assert list(chosen) == list(np.argsort(-scores, kind="stable")[:taken])
    # independent check of the rule: the expected cost reaches the budget only at the last region
    assert expected * taken >= budget > expected * (taken - 1)


def test_integer_costs_select_exactly_as_before():
    rng = np.random.default_rng(1)
    scores, costs = rng.random(200), rng.integers(1, 5, 200)
    chosen = select_by_budget(scores, np.ones(200, bool), costs, 57)
    order = np.argsort(-scores, kind="stable")
    spent = np.cumsum(costs[order])
    k = int(np.argmax(spent >= 57))
    assert list(chosen) == list(order[:k + 1])


def test_simulated_oracle_plans_with_true_costs():
    mh = np.zeros((4, 3), bool)
    mh[0, 0] = mh[1, [0, 1]] = mh[2, [0, 1, 2]] = mh[3, 1] = True
    table = OracleTable([0, 4], multi_hot_to_bits(mh), [0, 0, 1, 1], [5, 5, 5, 5], 2)
    oracle = SimulatedOracle(table)
    pool = RegionPool(table.offsets, 2)
    assert list(oracle.planned_costs(pool, "multi")) == [1, 2, 3, 1]
    assert list(oracle.planned_costs(pool, "dominant")) == [1, 1, 1, 1]
    bits, cost = oracle.answer(1, np.array([2, 0]), None, "multi")
    assert list(cost) == [3, 1] and list(bits) == list(multi_hot_to_bits(mh[[2, 0]]))
    assert oracle.full_annotation_cost() == 7


class _Regions:
    """Images + superpixels only: any label read fails."""
    ignore_index = 255

    def __init__(self):
        self.maps = [np.repeat(np.arange(4), 4).reshape(4, 4), np.array([[0, 0], [2, 2]])]

    def num_regions(self, i):
        return int(self.maps[i].max()) + 1

    def load_regions(self, i):
        return self.maps[i]

    def names(self):
        return ["a", "b"]

    def load_label(self, i):
        raise AssertionError("the human oracle read a ground-truth label")


def test_human_oracle_region_table_from_superpixels_and_planned_costs(tmp_path):
    ds = _Regions()
    oracle = HumanOracle(str(tmp_path), ds, [0, 1], labeling="multi", prior=1.25, class_names=["x", "y"])
    assert list(oracle.offsets) == [0, 4, 7]
    assert list(oracle.pixels) == [4, 4, 4, 4, 2, 0, 2]  # region 1 of image b does not occur
    pool = RegionPool(oracle.offsets, 2, valid=oracle.pixels > 0)
    assert np.all(oracle.planned_costs(pool, "multi") == 1.25)
    assert np.all(oracle.planned_costs(pool, "dominant") == 1.0)
    with pytest.raises(ValueError, match="expected_classes_prior"):
        HumanOracle(str(tmp_path), ds, [0, 1], labeling="multi", prior=0, class_names=["x", "y"])
