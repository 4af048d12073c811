"""The active-learning experiment (README, "Active learning: `mulact-train`"), round after
round as in the paper's algorithm::

    for t in 1..rounds:
        regions = selector.choose(t)          acquire (random in round 1)
        labels  = oracle.answer(regions)      ask
        train stage 1 (and stage 2)           on the labels of rounds 1..t
        evaluate, record                      metrics.json / .csv / plot

Every step reads and writes through the run directory (:class:`mulact.runstore.RunDir`, file
table in docs/design.md, "Where things live") and is skipped on rerun when its output exists
and verifies, so a killed run restarted with the same command continues where it stopped and —
training being deterministic for a seed (:mod:`mulact.engine.train`) — makes the same
selections. A damaged file that can be derived again is recomputed with a warning naming it; a
damaged pool stops the run (README, *Resume*).

The collaborators and what they get: :mod:`~mulact.al.session` (device, data, lock, config
check), :class:`~mulact.al.selector.Selector`, the :class:`~mulact.al.oracle.Oracle` (the
human one raises :class:`AnswersPending` after writing a round's queries; a rerun picks the
answers up), :class:`~mulact.al.trainer.Trainer`, :class:`~mulact.al.records.PoolRecords` and
:class:`~mulact.al.metrics.RunMetrics`. Under ``torchrun`` every rank runs this same loop; the
collaborators shard the per-image passes, train data-parallel, select once on rank 0 and let
only rank 0 write.
"""
from __future__ import annotations

import time

from mulact.config import TrainConfig
from mulact.engine.precision import describe as describe_precision

from .metrics import RunMetrics, percent, share_of_full_cost
from .oracle import AnswersPending, make_oracle
from .records import PoolRecords
from .reference import reference_of
from .selector import Selector
from .session import Session, open_session
from .trainer import Trainer

__all__ = ["AnswersPending", "run_experiment", "run_full_supervision", "run_rounds"]


def run_rounds(session: Session, reference: dict | None = None) -> list[dict]:
    """Execute (or resume) every round of the run opened in ``session``; the metrics records.
    ``reference``: the full-supervision reference (:mod:`mulact.al.reference`) the metrics
    measure the rounds against, or None."""
    cfg, run, data, echo, warn = session.cfg, session.run, session.data, session.echo, session.warn_damaged
    t_start = time.time()
    oracle = make_oracle(cfg.oracle, run, data.train, data.indices, labeling=cfg.labeling,
                         prior=cfg.expected_classes_prior, class_names=data.class_names, trim=cfg.trim,
                         echo=echo, warn_damaged=warn)
    session.report_region_size(oracle.pixels)
    trainer = Trainer(cfg, run, data, session.device, warn)
    selector = Selector(cfg, data.train, session.device, trainer.round_model)
    records = PoolRecords(run, data.train.names(), acquisition=cfg.acquisition, labeling=cfg.labeling,
                          warn_damaged=warn)
    report = RunMetrics(run, data.class_names, acquisition=cfg.acquisition, stage2=cfg.stage2, warn_damaged=warn,
                        title=f"{cfg.name}: {cfg.acquisition}, {cfg.labeling}-class labels", reference=reference)
    echo(describe_precision(cfg.amp, session.device))
    pool = records.load(oracle, data.num_classes)
    full_cost = oracle.full_annotation_cost()
    metrics = report.load()
    done_rounds = {m["round"] for m in metrics}
    for t in range(1, cfg.rounds + 1):
        if pool.num_rounds < t:
            started = time.time()
            choice = selector.choose(t, pool, oracle)                            # acquire
            if choice is None:
                echo(f"round {t}: the pool is exhausted (every selectable region is labeled); stopping")
                break
            chosen, scores = choice
            bits, cost = oracle.answer(t, chosen, scores, cfg.labeling)          # ask
            records.add_round(t, pool, chosen, bits, cost, scores, started)
        else:
            records.check_selection(t, pool)
        if t in done_rounds:
            continue
        pt = pool.until(t)  # a round trains on the labels of rounds 1..t only
        s1 = trainer.stage1(t, pt)                                               # train stage 1
        rec = report.round_record(t, pool, full_cost, trainer.evaluate_stage(t, "stage1"), s1)
        rec.update(oracle.round_metrics(t))
        if cfg.stage2:
            s2 = trainer.stage2(t, pt)                                           # stage 2
            report.add_stage2(rec, trainer.evaluate_stage(t, "stage2"), s2)
        metrics.append(rec)                                                      # record
        report.save(t, metrics)
        trainer.write_smp_model(t)                                               # model_smp.pt
        echo(f"round {t}: mIoU {percent(rec['miou'])}  clicks {rec['clicks']} "
             f"(cumulative {rec['cumulative_clicks']}, {share_of_full_cost(rec)}% of full)")
    # the rounds this invocation did not redo: their weights, pseudo labels and metrics files
    # are verified (and the damaged ones recomputed), so a rerun leaves a whole run
    for t in sorted(done_rounds & set(range(1, min(pool.num_rounds, cfg.rounds) + 1))):
        trainer.train_round(t, pool)
    report.check_files(metrics)
    if metrics:
        trainer.check_smp_model(metrics[-1]["round"])
    echo(report.summary_table(metrics))
    echo(f"run directory: {run.root}   ({time.time() - t_start:.0f}s this invocation)")
    return metrics


def run_full_supervision(session: Session) -> list[dict]:
    """``--labeling full``: the run's one model, trained on every pixel of the train split
    (:meth:`Trainer.full_supervision`); its record has the whole split labeled, at 100 % of the
    full annotation cost. Resumable and verified like a round."""
    cfg, run, data, echo, warn = session.cfg, session.run, session.data, session.echo, session.warn_damaged
    t_start = time.time()
    oracle = make_oracle("simulated", run, data.train, data.indices, labeling="multi",
                         prior=cfg.expected_classes_prior, class_names=data.class_names, trim=cfg.trim,
                         echo=echo, warn_damaged=warn)
    trainer = Trainer(cfg, run, data, session.device, warn)
    report = RunMetrics(run, data.class_names, acquisition="all", stage2=False, warn_damaged=warn,
                        title=f"{cfg.name}: full supervision")
    echo(describe_precision(cfg.amp, session.device))
    echo(f"labeling full: one model on every pixel of the {len(data.indices)} train images "
         f"({cfg.iterations} iterations); rounds, budget, acquisition and stage 2 do not apply")
    metrics = report.load()
    s1 = trainer.full_supervision()  # verified (a damaged file is trained again) when it exists
    if not metrics:
        rec = report.full_record(oracle.full_annotation_cost(), int((oracle.pixels > 0).sum()), len(data.indices),
                                 trainer.evaluate_stage(1, "stage1"), s1)
        metrics = [rec]
        report.save(1, metrics)
        trainer.write_smp_model(1)
        echo(f"full supervision: mIoU {percent(rec['miou'])}")
    report.check_files(metrics)
    trainer.check_smp_model(1)
    echo(f"run directory: {run.root}   ({time.time() - t_start:.0f}s this invocation)")
    return metrics


def run_experiment(cfg: TrainConfig, echo=print) -> list[dict]:
    """Open the run of ``cfg`` (validated by :func:`mulact.config.resolve_config`), run every
    round and release the run directory. With ``--reference auto`` the full-supervision
    reference is looked up (and trained the first time) before the run opens."""
    reference = reference_of(cfg, echo=echo)
    session = open_session(cfg, echo=echo)
    try:
        if cfg.labeling == "full":
            return run_full_supervision(session)
        return run_rounds(session, reference)
    finally:
        session.close()
