"""The active-learning loop: region pool and run state, acquisition, oracle, stage 2.

- :mod:`mulact.al.pool` — :class:`RegionPool` (what was asked and answered);
  :mod:`mulact.al.labels` (bit-mask labels), :mod:`mulact.al.oracle_table`
  (:class:`OracleTable`), :mod:`mulact.al.budget` (the budget cut).
- :mod:`mulact.al.acquisition` — one-pass pool scan and scoring.
- :mod:`mulact.al.oracle` — who answers: the simulated oracle (ground truth) or people
  (:class:`~mulact.al.oracle.HumanOracle`), and the budget rule when costs are unknown.
- :mod:`mulact.al.answers` — query and answer files of a human-oracle run.
- :mod:`mulact.al.loop` — :func:`run_experiment` / :func:`~mulact.al.loop.run_rounds`
  (``mulact-train``), the round loop over :mod:`~mulact.al.session` (opening a run),
  :mod:`~mulact.al.selector`, :mod:`~mulact.al.trainer`, :mod:`~mulact.al.records` and
  :mod:`~mulact.al.metrics`.
"""
from .budget import select_by_budget
from .oracle_table import OracleTable
from .pool import RegionPool

__all__ = ["OracleTable", "RegionPool", "select_by_budget"]
