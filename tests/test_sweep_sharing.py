"""Seeding a fresh run directory with another run's oracle and round-1 files."""
import filecmp
import json

import numpy as np
import pytest
import torch

from mulact.al.oracle_table import OracleTable
from mulact.al.pool import RegionPool
from mulact.sweep import sharing


def _donor(path):
    offsets = np.array([0, 4, 9, 12])
    n = int(offsets[-1])
    rng = np.random.default_rng(0)
    bits = rng.integers(1, 8, n).astype(np.uint64)
    OracleTable(offsets, bits, rng.integers(0, 3, n), rng.integers(1, 50, n), 3).save(str(path / "oracle.npz"))
    pool = RegionPool(offsets, 3)
    pool.add_round(np.array([1, 5, 10]), bits[[1, 5, 10]], np.array([1, 2, 1]))
    pool.add_round(np.array([0, 6]), bits[[0, 6]], np.array([2, 2]))
    pool.save(str(path / "pool.npz"))
    (path / "selections").mkdir()
    (path / "selections" / "round_01.json").write_text(json.dumps({"round": 1}))
    (path / "selections" / "round_02.json").write_text(json.dumps({"round": 2}))
    (path / "round_01").mkdir()
    torch.save({"model": {"w": torch.arange(3.0)}, "summary": {"iterations": 8}}, path / "round_01" / "stage1.pt")
    (path / "round_02").mkdir()
    torch.save({"model": {}}, path / "round_02" / "stage1.pt")
    return pool


def test_round1_files_are_copied_and_the_pool_cut_after_round_1(tmp_path):
    donor = tmp_path / "donor"
    donor.mkdir()
    full = _donor(donor)
    assert sharing.oracle_donor_ready(str(donor)) and sharing.round1_donor_ready(str(donor))
    run = tmp_path / "runs" / "v" / "seed_0"
    got = sharing.seed_run_dir(str(run), None, str(donor))
    assert got == {"oracle": str(donor), "round1_stage1": str(donor)}
    assert filecmp.cmp(donor / "oracle.npz", run / "oracle.npz", shallow=False)
    assert filecmp.cmp(donor / "round_01" / "stage1.pt", run / "round_01" / "stage1.pt", shallow=False)
    assert filecmp.cmp(donor / "selections" / "round_01.json", run / "selections" / "round_01.json", shallow=False)
    assert not (run / "round_02").exists() and not (run / "selections" / "round_02.json").exists()
    pool = RegionPool.load(str(run / "pool.npz"))
    assert pool.num_rounds == 1
    assert np.array_equal(pool.selections[0], full.selections[0])
    first = full.round == 1
    assert np.array_equal(pool.round, np.where(first, 1, 0))
    assert np.array_equal(pool.labels, np.where(first, full.labels, 0))
    assert np.array_equal(pool.cost, np.where(first, full.cost, 0))
    assert np.array_equal(pool.valid, full.valid) and np.array_equal(pool.offsets, full.offsets)


def test_oracle_only_and_fresh_directories_only(tmp_path):
    donor = tmp_path / "donor"
    donor.mkdir()
    _donor(donor)
    run = tmp_path / "r"
    assert sharing.seed_run_dir(str(run), str(donor), None) == {"oracle": str(donor)}
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json", "oracle.npz"]  # recorded in the run's manifest
    with pytest.raises(FileExistsError, match="only a fresh run directory"):
        sharing.seed_run_dir(str(run), str(donor), None)


def test_interrupted_seeding_leaves_no_run_directory(tmp_path, monkeypatch):
    donor = tmp_path / "donor"
    donor.mkdir()
    _donor(donor)

    def boom(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sharing, "_round1_pool", boom)
    parent = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        sharing.seed_run_dir(str(parent / "seed_0"), None, str(donor))
    assert list(parent.iterdir()) == []  # neither the run directory nor the temporary one


def test_not_ready_without_stage1(tmp_path):
    donor = tmp_path / "donor"
    donor.mkdir()
    _donor(donor)
    (donor / "round_01" / "stage1.pt").unlink()
    assert sharing.oracle_donor_ready(str(donor)) and not sharing.round1_donor_ready(str(donor))
