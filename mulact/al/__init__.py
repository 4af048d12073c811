"""The active-learning loop: region pool and run state, acquisition, oracle, stage 2.

- :mod:`mulact.al.pool` — :class:`RegionPool`, :class:`OracleTable`, budget selection,
  atomic persistence.
- :mod:`mulact.al.acquisition` — one-pass pool scan and scoring.
- :mod:`mulact.al.oracle` — who answers: the simulated oracle (ground truth) or people
  (:class:`~mulact.al.oracle.HumanOracle`), and the budget rule when costs are unknown.
- :mod:`mulact.al.answers` — query and answer files of a human-oracle run.
- :mod:`mulact.al.loop` — :class:`Experiment` / :func:`run_experiment` (``mulact-train``).
"""
from .pool import OracleTable, RegionPool, select_by_budget

__all__ = ["OracleTable", "RegionPool", "select_by_budget"]
