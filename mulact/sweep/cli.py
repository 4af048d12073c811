"""``mulact-sweep``: run a sweep of ``mulact-train`` variants over seeds, and report it.

    mulact-sweep labels                      # a built-in sweep (mulact-sweep --list)
    mulact-sweep my_sweep.yaml --jobs 2      # a sweep file; 2 runs at once, cores split
    mulact-sweep labels --plan               # runs and shared work, without running
    mulact-sweep report sweeps/labels        # (re)write the report of a sweep directory

Rerunning the same command resumes: finished runs are skipped, the others continue.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

__all__ = ["main"]


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mulact-sweep",
        description=("Run every (variant, seed) of a sweep file as its own mulact-train run, sharing "
                     "provably identical work, then report mean, std and 95%% t-intervals over seeds and "
                     "paired differences against the baseline. 'mulact-sweep report DIR' rewrites the report."),
        epilog="Rerun the same command to resume an interrupted sweep; finished runs are skipped.")
    p.add_argument("sweep", nargs="?", metavar="FILE|NAME", help="sweep YAML file or built-in sweep name")
    p.add_argument("--dir", default=None, help="sweep directory (default: sweeps/<sweep name>)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    p.add_argument("--threads", type=int, default=None,
                   help="torch/OpenMP threads per run (default: available cores // jobs)")
    p.add_argument("--no-share", dest="share", action="store_false",
                   help="compute everything in every run (no oracle / round-1 sharing)")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    p.add_argument("--plan", action="store_true", help="print the runs and what they share, run nothing")
    p.add_argument("--list", action="store_true", help="list the built-in sweeps and exit")
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mulact-sweep report",
                                description="Write DIR/report/ (report.md, rounds.csv, paired.csv, runs.csv, "
                                            "miou_vs_clicks.png) from the runs of a sweep directory.")
    p.add_argument("dir", metavar="DIR", help="sweep directory")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the t-intervals")
    p.add_argument("--baseline", default=None, metavar="VARIANT",
                   help="paired differences against this variant instead of the sweep file's baseline "
                        "(written to DIR/report_vs_VARIANT/)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else list(argv)
    from .spec import SweepFileError

    if argv[:1] == ["report"]:
        p = _report_parser()
        args = p.parse_args(argv[1:])
        if not 0 < args.confidence < 1:
            p.error(f"--confidence: expected a number in (0, 1), got {args.confidence}")
        from .report import write_report

        try:
            write_report(args.dir, confidence=args.confidence, baseline=args.baseline)
        except SweepFileError as err:
            print(f"mulact-sweep: error: {err}", file=sys.stderr)
            return 2
        return 0

    p = _run_parser()
    args = p.parse_args(argv)
    from .spec import builtin_sweeps, load_sweep

    if args.list:
        from .spec import parse_sweep

        for name, path in builtin_sweeps().items():
            with open(path) as fh:
                spec = parse_sweep(fh.read(), source=path)
            print(f"{name:12s} {len(spec.variants)} variants x {len(spec.seeds)} seeds: {spec.description}")
        return 0
    if args.sweep is None:
        p.error("the following arguments are required: FILE|NAME (or --list)")
    if args.jobs < 1:
        p.error(f"--jobs: expected >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads: expected >= 1, got {args.threads}")
    try:
        spec = load_sweep(args.sweep)
    except SweepFileError as err:
        print(f"mulact-sweep: error: {err}", file=sys.stderr)
        return 2
    sweep_dir = args.dir or os.path.join("sweeps", spec.name)
    if args.plan:
        _print_plan(spec, sweep_dir)
        return 0
    from .runner import run_sweep

    def terminated(signum, frame):
        raise KeyboardInterrupt  # stop the runs cleanly, as on Ctrl-C

    signal.signal(signal.SIGTERM, terminated)
    try:
        outcome = run_sweep(spec, sweep_dir, jobs=args.jobs, threads=args.threads, share=args.share,
                            report=args.report)
    except (SweepFileError, RuntimeError) as err:
        print(f"mulact-sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nmulact-sweep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if outcome.failed:
        print("mulact-sweep: failed runs (rerun the same command to retry them): "
              + ", ".join(f"{r.variant} seed {r.seed}" for r in outcome.failed), file=sys.stderr)
        return 1
    return 0


def _print_plan(spec, sweep_dir) -> None:
    from .runner import plan_runs, run_finished
    from .sharing import oracle_key, round1_key

    runs = plan_runs(spec, sweep_dir)
    print(f"{spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds -> {sweep_dir}")
    first_oracle, first_round1 = {}, {}
    for r in runs:
        ok, rk = oracle_key(r.config), round1_key(r.config)
        notes = []
        if ok in first_oracle:
            notes.append(f"oracle from {first_oracle[ok]}")
        if rk in first_round1:
            notes.append(f"round-1 selection + stage 1 from {first_round1[rk]}")
        first_oracle.setdefault(ok, r.label)
        first_round1.setdefault(rk, r.label)
        state = "finished" if run_finished(r.run_dir, r.config["rounds"]) else "to run"
        print(f"  {r.label:32s} {state:9s} {'; '.join(notes) or 'computes everything'}")


if __name__ == "__main__":
    sys.exit(main())
