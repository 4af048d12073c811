import numpy as np
import pytest
import torch

from mulact.al.budget import select_by_budget
from mulact.al.labels import bits_to_multi_hot, multi_hot_to_bits, popcount
from mulact.al.oracle_table import OracleTable
from mulact.al.pool import RegionPool


def _naive_select(scores, candidates, costs, budget):
    order = sorted((i for i in range(len(scores)) if candidates[i]), key=lambda i: (-scores[i], i))
    out, spent = [], 0
    for i in order:
        if spent >= budget:
            break
        out.append(i)
        spent += costs[i]
    return out


@pytest.mark.parametrize("seed", range(20))
def test_select_by_budget_matches_naive_and_overshoot_at_most_one_region(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    scores = rng.integers(0, 5, n).astype(float)  # many exact ties
    cand = rng.random(n) < 0.7
    costs = rng.integers(1, 4, n)
    budget = int(rng.integers(1, 40))
    sel = select_by_budget(scores, cand, costs, budget)
    assert sel.tolist() == _naive_select(scores, cand, costs, budget)
    spent = costs[sel].sum()
    if spent < budget:  # only when the candidates ran out
        assert len(sel) == cand.sum()
    else:
        assert spent - costs[sel[-1]] < budget  # removing the last region goes under budget
    assert cand[sel].all() and len(set(sel.tolist())) == len(sel)


def test_select_exact_budget_and_empty():
    assert select_by_budget([3, 2, 1], [1, 1, 1], [2, 2, 2], 4).tolist() == [0, 1]
    assert select_by_budget([3, 2, 1], [1, 1, 1], [2, 2, 2], 5).tolist() == [0, 1, 2]
    assert select_by_budget([1.0], [False], [1], 10).tolist() == []
    with pytest.raises(ValueError, match="scores"):
        select_by_budget([np.nan, 1.0], [True, True], [1, 1], 1)


def test_bits_roundtrip_and_popcount():
    mh = np.random.default_rng(0).random((5, 7, 20)) < 0.3
    bits = multi_hot_to_bits(mh)
    assert np.array_equal(bits_to_multi_hot(bits, 20), mh)
    assert np.array_equal(popcount(bits), mh.sum(-1))


def _oracle():
    # 2 images: 3 and 2 regions; C = 3, undefined = bit 3; region 2 of image 0 is empty.
    mh = np.array([[1, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], bool)
    return OracleTable([0, 3, 5], multi_hot_to_bits(mh), [3, 1, -1, 2, 0], [10, 5, 0, 7, 3], 3)


def test_oracle_costs_per_labeling_mode():
    o = _oracle()
    bits, cost = o.answer([0, 1, 3], "multi")
    assert cost.tolist() == [3, 1, 1]  # undefined bit counts as a click
    bits, cost = o.answer([0, 1, 3], "dominant")
    assert cost.tolist() == [1, 1, 1]
    assert bits_to_multi_hot(bits, 4).astype(int).tolist() == [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert o.full_annotation_cost() == 3 + 1 + 1 + 1
    with pytest.raises(ValueError, match="flat"):
        o.answer([2], "dominant")


def test_pool_rounds_labels_and_persistence(tmp_path):
    o = _oracle()
    pool = RegionPool(o.offsets, 3, valid=o.pixels > 0)
    assert not pool.valid[2]
    bits, cost = o.answer([0, 4], "multi")
    pool.add_round([0, 4], bits, cost)
    assert pool.clicks(1) == 4 and pool.clicks() == 4
    assert pool.labeled_images().tolist() == [0, 1]
    with pytest.raises(ValueError, match="already labeled"):
        pool.add_round([4], *o.answer([4], "multi"))
    with pytest.raises(ValueError, match="not in the pool"):
        pool.add_round([2], np.array([1], np.uint64), np.array([1]))
    pool.add_round([3], *o.answer([3], "multi"))
    rl = pool.region_labels(0, num_regions=4)
    assert rl.shape == (4, 4) and rl.dtype == torch.bool
    assert rl.int().tolist() == [[1, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert pool.region_labels(1).int().tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]
    assert pool.unlabeled_mask().tolist() == [False, True, False, False, False]
    path = str(tmp_path / "pool.npz")
    pool.save(path)
    back = RegionPool.load(path)
    assert back.num_rounds == 2 and [s.tolist() for s in back.selections] == [[0, 4], [3]]
    assert np.array_equal(back.labels, pool.labels) and np.array_equal(back.cost, pool.cost)
    rec = back.selection_record(1, names=["a", "b"], scores=[0.5, 0.25])
    assert rec["clicks"] == 4 and rec["regions"][1] == {"image": 1, "region": 1, "classes": [0], "cost": 1,
                                                         "name": "b", "score": 0.25}
    o.save(str(tmp_path / "o.npz"))
    o2 = OracleTable.load(str(tmp_path / "o.npz"))
    assert np.array_equal(o2.bits, o.bits) and o2.num_classes == 3
