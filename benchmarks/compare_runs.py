"""Paired comparison of two sets of `mulact-train` runs that differ in one thing (e.g. precision).

    python benchmarks/compare_runs.py A_DIR B_DIR --names float32 bfloat16 --out report.md

``A_DIR`` and ``B_DIR`` each hold ``seed_<s>/metrics.json`` (a variant's directory of a
``mulact-sweep`` run, ``<sweep>/runs/<variant>``). Seeds present in both are paired; per round
the table gives each side's mean mIoU (reported, stage 1) and the paired difference B − A with
its 95 % t-interval and p-value (:mod:`mulact.sweep.stats`), plus the mean seconds of training
per round. A round a run did not measure (``miou`` null: a folder dataset without validation
masks) or did not reach counts as missing for that seed; a column with no number says so.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mulact.sweep.stats import paired_difference, summarize


def load(directory: Path) -> dict[int, list[dict]]:
    runs = {}
    for seed_dir in sorted(directory.glob("seed_*")):
        metrics = seed_dir / "metrics.json"
        if metrics.is_file():
            runs[int(seed_dir.name.split("_")[1])] = json.loads(metrics.read_text())["rounds"]
    return runs


def _fmt(s) -> str:
    if s.n == 0:
        return "n/a"
    if s.n == 1:
        return f"{s.mean:+.1f} (1 seed)"
    return f"{s.mean:+.1f} [{s.low:+.1f}, {s.high:+.1f}], p = {s.p_value:.2f}"


def _mean(values) -> str:
    s = summarize(values)
    return "n/a" if s.n == 0 else f"{s.mean:.1f}"


def _record(rounds: list[dict], t: int) -> dict:
    return next((m for m in rounds if m["round"] == t), {})


def _points(value) -> float:
    """An mIoU in points; NaN when the run did not measure it (``None``) or has no such round."""
    return math.nan if value is None else 100 * value


def compare(a: dict, b: dict, names) -> str:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise SystemExit("no seed present in both directories")
    rounds = sorted({m["round"] for s in seeds for m in a[s]} & {m["round"] for s in seeds for m in b[s]})
    lines = [f"Seeds paired: {', '.join(map(str, seeds))}. mIoU in points; difference = {names[1]} − {names[0]}, "
             "mean with 95 % t-interval over seeds; n/a: no seed measured it (no validation masks).", "",
             f"| round | mIoU {names[0]} | mIoU {names[1]} | Δ reported mIoU | Δ stage-1 mIoU | "
             f"training s/round {names[0]} | {names[1]} |", "|---:|---:|---:|---|---|---:|---:|"]
    for t in rounds:
        def col(runs, key):
            return {s: _points(_record(runs[s], t).get(key)) for s in seeds}

        def secs(runs):
            done = [_record(runs[s], t) for s in seeds if _record(runs[s], t)]
            return sum((m.get("stage1_seconds") or 0) + (m.get("stage2_seconds") or 0) for m in done) / len(done)

        ma, mb = col(a, "miou"), col(b, "miou")
        sa, sb = col(a, "stage1_miou"), col(b, "stage1_miou")
        lines.append(f"| {t} | {_mean(list(ma.values()))} | {_mean(list(mb.values()))} | "
                     f"{_fmt(paired_difference(mb, ma))} | {_fmt(paired_difference(sb, sa))} | "
                     f"{secs(a):.0f} | {secs(b):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--names", nargs=2, default=["A", "B"])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    text = compare(load(args.a), load(args.b), args.names)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
