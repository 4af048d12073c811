"""The acquisition registry (mulact.ops.acquisition.ACQUISITIONS) and the KNN baseline."""
import math

import numpy as np
import pytest
import torch

from mulact.config import TrainConfig
from mulact.ops.acquisition import (
    ACQUISITION_METHODS,
    ACQUISITIONS,
    knn_density_scores,
    mean_uncertainty,
    measure_for,
    region_scores,
)


def test_the_registry_is_the_config_choice_list():
    import dataclasses

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "acquisition")
    assert tuple(field.metadata["choices"]) == ACQUISITION_METHODS == tuple(ACQUISITIONS)
    for name, entry in ACQUISITIONS.items():
        assert measure_for(name) == entry.measure and entry.summary


def test_only_prior_methods_demand_the_prior():
    u = torch.rand(1, 4, 3)
    c = torch.randint(1, 5, (1, 4, 3), dtype=torch.int32)
    for name, entry in ACQUISITIONS.items():
        if entry.needs_prior:
            with pytest.raises(ValueError, match="prior"):
                region_scores(name, u, c)
        else:
            region_scores(name, u, c, generator=torch.Generator().manual_seed(0))


def naive_knn(u_sum, count, k, refs):
    """Zhu et al.'s k-NN density, by hand: cosine of class compositions, k most similar others."""
    C = count.shape[-1]
    q = count.reshape(-1, C).double()
    mean_u = mean_uncertainty(u_sum, count).reshape(-1).double()
    out = torch.zeros(q.shape[0], dtype=torch.float64)
    for r in range(q.shape[0]):
        if q[r].sum() == 0:
            continue
        sims = sorted((float(q[r] @ q[s] / (q[r].norm() * q[s].norm())) for s in refs if s != r), reverse=True)
        density = 1.0 if not sims else sum(sims[:k]) / len(sims[:k])
        out[r] = mean_u[r] * density
    return out.reshape(count.shape[:-1]).float()


@pytest.mark.parametrize("k", [1, 3, 50])
def test_knn_matches_the_definition(k):
    g = torch.Generator().manual_seed(k)
    count = torch.randint(0, 6, (2, 9, 5), generator=g).to(torch.int32)
    count[0, 3] = 0  # an empty region: neither scored nor a neighbour
    u_sum = torch.rand(2, 9, 5, generator=g) * count
    refs = [r for r in range(18) if count.reshape(-1, 5)[r].sum() > 0]
    torch.testing.assert_close(knn_density_scores(u_sum, count, k=k), naive_knn(u_sum, count, k, refs))
    assert knn_density_scores(u_sum, count, k=k)[0, 3] == 0


def test_knn_reference_subset_at_an_even_stride():
    g = torch.Generator().manual_seed(7)
    count = torch.randint(1, 6, (1, 40, 4), generator=g).to(torch.int32)
    u_sum = torch.rand(1, 40, 4, generator=g)
    refs = np.round(np.linspace(0, 39, 8)).astype(int).tolist()
    got = knn_density_scores(u_sum, count, k=3, max_references=8)
    torch.testing.assert_close(got, naive_knn(u_sum, count, 3, refs))
    assert not torch.allclose(got, knn_density_scores(u_sum, count, k=3))  # the subset changes the density


def test_knn_prefers_typical_regions_at_equal_uncertainty():
    # three regions of class 0, one of class 1, all equally uncertain: the odd one is least dense
    count = torch.tensor([[[4, 0], [5, 0], [3, 0], [0, 4]]], dtype=torch.int32)
    u_sum = count.float() * 0.5
    s = region_scores("knn", u_sum, count)
    assert s[0, 3] < s[0, :3].min()
    s = knn_density_scores(u_sum, count, k=2)  # two neighbours of the same class: density 1
    assert math.isclose(float(s[0, 0]), 0.5, rel_tol=1e-6) and float(s[0, 3]) == 0.0


def test_knn_lone_region_and_bad_k():
    count = torch.tensor([[[2, 1], [0, 0]]], dtype=torch.int32)
    u_sum = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    torch.testing.assert_close(knn_density_scores(u_sum, count), mean_uncertainty(u_sum, count))
    with pytest.raises(ValueError, match="`k`"):
        knn_density_scores(u_sum, count, k=0)
