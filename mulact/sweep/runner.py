"""Running a sweep: one ``mulact-train`` run directory per (variant, seed), resumable.

Sweep directory layout::

    sweep.yaml                        the sweep as run (a rerun must not change a variant)
    runs/<variant>/seed_<s>/          the run directory of each run (see README, "Outputs")
    logs/<variant>-seed_<s>.log       the output of each run (appended on every attempt)
    logs/<variant>-seed_<s>.job.json  what the run's process was given
    shared.json                       which files each run received from which other run
    report/                           written by ``mulact-sweep report`` (:mod:`mulact.sweep.report`)

Each run executes in its own process (:mod:`mulact.sweep.worker`) so that thread counts are
fixed before torch starts, a crashing run does not end the sweep, and memory is returned
after each run. ``jobs`` processes run at once with ``cores // jobs`` threads each. A run
whose ``metrics.json`` holds every round is finished and skipped; any other run is started,
and ``mulact-train``'s own resumability continues it from its last completed step. Work that
is provably identical between runs is shared (:mod:`mulact.sweep.sharing`): a fresh run
whose shared inputs are being computed by a running run waits for them rather than computing
them again.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import yaml

from mulact.runstore import RunDir, RunStateError, atomic_write, write_json

from .files import read_json as _read_json
from .sharing import oracle_donor_ready, oracle_key, round1_donor_ready, round1_key, seed_run_dir
from .spec import SweepFileError, SweepSpec, parse_sweep

__all__ = ["Run", "SweepOutcome", "plan_runs", "run_finished", "run_sweep", "threads_per_job"]

# Options that may differ when a sweep directory is reused (they do not change results).
_RUNTIME = {"device", "num_workers"}


@dataclass
class Run:
    variant: str
    seed: int
    run_dir: str
    config: dict
    overrides: dict
    preset: str | None = None
    state: str = "pending"  # pending | running | done | failed | skipped
    shared: dict = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.variant}-seed_{self.seed}"


@dataclass
class SweepOutcome:
    runs: list
    report_dir: str | None

    @property
    def failed(self) -> list:
        return [r for r in self.runs if r.state == "failed"]


def cores_available() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_job(jobs: int, threads: int | None = None) -> int:
    """Threads of each run: ``threads`` if given, else the cores split evenly over ``jobs``."""
    if jobs < 1:
        raise ValueError(f"jobs: expected >= 1, got {jobs}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        return threads
    return max(1, cores_available() // jobs)


def run_dir_of(sweep_dir: str, variant: str, seed: int) -> str:
    return os.path.join(sweep_dir, "runs", variant, f"seed_{seed}")


def plan_runs(spec: SweepSpec, sweep_dir: str) -> list[Run]:
    """Every (variant, seed) in launch order: seed by seed, variants in file order."""
    runs = []
    for seed in spec.seeds:
        for variant in spec.variants:
            rd = os.path.abspath(run_dir_of(sweep_dir, variant, seed))
            ov = {**spec.overrides(variant, seed), "run_dir": rd}
            runs.append(Run(variant, seed, rd, spec.configs[(variant, seed)], ov, spec.preset))
    return runs


def recorded_rounds(run_dir: str) -> list[dict]:
    """The finished rounds of a run of the sweep (its ``metrics.json``, verified against the
    run's manifest); [] when it has none yet."""
    run = RunDir(run_dir)
    run.open(readonly=True)
    return run.recorded_rounds()


def run_finished(run_dir: str, rounds: int) -> bool:
    """True when the run's ``metrics.json`` holds every round 1..``rounds``."""
    try:
        done = {int(m["round"]) for m in recorded_rounds(run_dir)}
    except (RunStateError, ValueError, TypeError):
        return False
    return set(range(1, rounds + 1)) <= done


def _check_saved_sweep(spec: SweepSpec, sweep_dir: str) -> None:
    path = os.path.join(sweep_dir, "sweep.yaml")
    if not os.path.isfile(path):
        return
    with open(path) as fh:
        saved = parse_sweep(fh.read(), source=path)
    for variant in set(saved.variants) & set(spec.variants):
        a = saved.configs[(variant, saved.seeds[0])]
        b = spec.configs[(variant, spec.seeds[0])]
        diff = sorted(k for k in set(a) | set(b)
                      if k not in ("seed", "name", "run_dir") and k not in _RUNTIME and a.get(k) != b.get(k))
        if diff:
            detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
            raise SweepFileError(f"sweep dir {sweep_dir!r}: variant {variant!r} was run with other options "
                                 f"({detail}); give the changed variant a new name or use another --dir")


def _die_with_parent(parent: int):
    """In the child before exec: get SIGKILL when the sweep process dies (Linux), so a killed
    sweep leaves no run writing into its directory behind it."""
    def hook():
        if sys.platform.startswith("linux"):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:
                os._exit(1)
    return hook


class _SweepLock:
    def __init__(self, sweep_dir: str):
        self.path = os.path.join(sweep_dir, ".lock")
        self.fh = None

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise RuntimeError(f"sweep dir {os.path.dirname(self.path)!r}: another mulact-sweep is running there") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def run_sweep(spec: SweepSpec, sweep_dir: str, jobs: int = 1, threads: int | None = None, share: bool = True,
              report: bool = True, echo=print, poll: float = 0.5) -> SweepOutcome:
    """Run (or resume) every (variant, seed) of ``spec`` under ``sweep_dir``; then write the report."""
    nthreads = threads_per_job(jobs, threads)
    if jobs * nthreads > cores_available():
        echo(f"mulact-sweep: warning: {jobs} jobs x {nthreads} threads exceed the {cores_available()} cores")
    os.makedirs(sweep_dir, exist_ok=True)
    with _SweepLock(sweep_dir):
        _check_saved_sweep(spec, sweep_dir)
        text = yaml.safe_dump(spec.to_dict(), sort_keys=False)
        atomic_write(os.path.join(sweep_dir, "sweep.yaml"), text.encode())
        runs = plan_runs(spec, sweep_dir)
        _remove_stale_seeding(runs)
        shared_path = os.path.join(sweep_dir, "shared.json")
        provenance = _read_json(shared_path)
        for r in runs:
            r.shared = provenance.get(r.label, {})
            if run_finished(r.run_dir, r.config["rounds"]):
                r.state = "skipped"
        todo = [r for r in runs if r.state == "pending"]
        echo(f"mulact-sweep: {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds = {len(runs)} runs "
             f"({len(runs) - len(todo)} finished, skipped); {jobs} job(s) x {nthreads} thread(s) -> {sweep_dir}")
        try:
            _schedule(runs, todo, sweep_dir, jobs, nthreads, share, provenance, shared_path, echo, poll)
        except KeyboardInterrupt:
            _stop(r for r in runs if r.state == "running")
            raise
        report_dir = None
        if report:
            from .report import write_report

            report_dir = write_report(sweep_dir, echo=echo)
    return SweepOutcome(runs, report_dir)


def _remove_stale_seeding(runs) -> None:
    import shutil

    for parent in {os.path.dirname(r.run_dir) for r in runs}:
        if os.path.isdir(parent):
            for name in os.listdir(parent):
                if name.startswith(".seeding-"):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _donor(run: Run, runs, key_fn, ready_fn):
    """(donor run or None, blocked): the first other run with the same key whose artifact is
    ready; blocked when none is ready yet but a running run with that key will produce it."""
    key = key_fn(run.config)
    same = [o for o in runs if o is not run and key_fn(o.config) == key]
    for o in same:
        if ready_fn(o.run_dir):
            return o, False
    return None, any(o.state == "running" for o in same)


def _schedule(runs, todo, sweep_dir, jobs, nthreads, share, provenance, shared_path, echo, poll) -> None:
    pending = list(todo)
    running: list[Run] = []
    total = len(runs)
    while pending or running:
        for r in list(running):
            rc = r.proc.poll()
            if rc is None:
                continue
            running.remove(r)
            r.proc = None
            finished = run_finished(r.run_dir, r.config["rounds"])
            r.state = "done" if rc == 0 and finished else "failed"
            if r.state == "done":
                echo(f"  done    {r.variant} seed {r.seed} ({time.time() - r.started:.0f}s)")
            elif rc == 0:
                # mulact-train stops early when no selectable region is left.
                echo(f"  stopped {r.variant} seed {r.seed}: finished without every round (see {_log(sweep_dir, r)})")
            else:
                echo(f"  FAILED  {r.variant} seed {r.seed} (exit {rc}); see {_log(sweep_dir, r)}")
        while len(running) < jobs:
            choice = None
            for r in pending:
                if os.path.exists(r.run_dir) or not share:
                    choice, donors = r, (None, None)
                    break
                o_donor, o_blocked = _donor(r, runs, oracle_key, oracle_donor_ready)
                r_donor, r_blocked = _donor(r, runs, round1_key, round1_donor_ready)
                if not (o_blocked and o_donor is None) and not (r_blocked and r_donor is None):
                    choice, donors = r, (o_donor, r_donor)
                    break
            if choice is None:
                break
            pending.remove(choice)
            o_donor, r_donor = donors
            if o_donor is not None or r_donor is not None:
                got = seed_run_dir(choice.run_dir, o_donor and o_donor.run_dir, r_donor and r_donor.run_dir)
                choice.shared = {k: os.path.relpath(v, sweep_dir) for k, v in got.items()}
                provenance[choice.label] = choice.shared
                write_json(shared_path, provenance, sort_keys=True)
            _launch(choice, sweep_dir, nthreads)
            running.append(choice)
            n = sum(r.state != "pending" for r in runs)
            note = "; shared: " + ", ".join(f"{k} from {v}" for k, v in choice.shared.items()) if choice.shared else ""
            echo(f"  [{n}/{total}] start {choice.variant} seed {choice.seed}{note}")
        if running and (pending or running):
            time.sleep(poll)
        elif pending and not running:
            raise RuntimeError("mulact-sweep: internal error: every pending run waits on a run that is not running")


def _log(sweep_dir: str, run: Run) -> str:
    return os.path.join(sweep_dir, "logs", f"{run.label}.log")


def _launch(run: Run, sweep_dir: str, nthreads: int) -> None:
    logs = os.path.join(sweep_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    job_path = os.path.join(logs, f"{run.label}.job.json")
    write_json(job_path, {"preset": run.preset, "overrides": run.overrides, "threads": nthreads}, sort_keys=True)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(nthreads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as mulact-train: spinning threads stall shared CPUs
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TQDM_DISABLE", "1")  # progress bars would fill the log with carriage returns
    log = open(_log(sweep_dir, run), "a")
    log.write(f"\n=== mulact-sweep: start {run.label} at {time.strftime('%Y-%m-%d %H:%M:%S')} "
              f"({nthreads} threads) ===\n")
    log.flush()
    run.proc = subprocess.Popen([sys.executable, "-m", "mulact.sweep.worker", job_path], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=_die_with_parent(os.getpid()))
    log.close()
    run.state = "running"
    run.started = time.time()


def _stop(running) -> None:
    procs = [r.proc for r in running if r.proc is not None]
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
