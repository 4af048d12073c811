"""Probe a training regime: the full-supervision ceiling and the AL rounds under one setting.

Why this exists: a comparison of labeling strategies or acquisition functions can only be read
from runs whose mIoU is limited by labels, not by training (issue 20). A setting is a preset
plus ``TrainConfig`` overrides; for each seed the probe measures

- ``ceiling``: the full-supervision reference, ``mulact-train --labeling full`` under the
  setting's options (:mod:`mulact.al.reference`): the same model, initial weights, schedule and
  augmentation as round 1's stage 1, trained on every pixel of every training image (plain
  cross-entropy on the ground truth, void ignored), evaluated on the validation split. Only
  the labels differ from a round's stage 1.
- ``rounds``: ``mulact-train`` with the same options in a child process; the per-round mIoU
  comes from its ``metrics.json``.
- ``curve``: one-round ``mulact-train`` runs (round 1 selects at random) at a few click
  budgets: whether mIoU rises with labels under the setting, at a fraction of the rounds' cost
  (no acquisition passes, no intermediate rounds).

::

    python benchmarks/probe_regime.py --name demo --no-stage2            # today's demo preset
    python benchmarks/probe_regime.py --name it360 --set iterations=360 --set budget=250 \\
        --seeds 0 1 --mode ceiling curve --budgets 250 1000 --no-stage2

Results accumulate in ``<out>/results.json`` (one entry per setting and seed, rewritten after
each measurement) and ``<out>/report.md`` is regenerated from it. Wall times are those of the
machine the probe ran on; the 1-minute load average at the start of each measurement is
recorded beside them, because a shared machine can make them several times longer.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as mulact-train: spinning threads stall on shared CPUs

DEFAULT_OUT = os.path.join("benchmarks", "results", "regime_probe_2026-12-03")
MODES = ("ceiling", "rounds", "curve")
def parse_overrides(items: list[str]) -> dict:
    """``["iterations=480", "stage2=false"]`` → ``{"iterations": "480", "stage2": "false"}``
    (converted later by :func:`mulact.config.resolve_config`, which names a bad value)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected OPTION=VALUE (a mulact-train option, e.g. iterations=480)")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def resolve(preset: str, overrides: dict, seed: int, run_dir: str):
    from mulact.config import resolve_config

    return resolve_config(preset, None, {**overrides, "seed": seed, "run_dir": run_dir})


def train_ceiling(cfg, run_dir: str) -> dict:
    """Full supervision under ``cfg``: the ``mulact-train --labeling full`` run of its
    reference configuration (:func:`mulact.al.reference.reference_config`) in ``run_dir`` —
    round 1's stage-1 model, initial weights, schedule and augmentation, every pixel labeled.
    Resumable like any run."""
    import dataclasses

    from mulact.al.loop import run_experiment
    from mulact.al.reference import reference_config

    ref = dataclasses.replace(reference_config(cfg), run_dir=run_dir)
    t0 = time.time()
    (rec,) = run_experiment(ref, echo=lambda *a, **k: None)
    return {"miou": rec["miou"], "iou": rec["iou"], "train_images": rec["labeled_images"],
            "iterations": cfg.iterations, "last_loss": rec["stage1_final_loss"],
            "train_seconds": rec["stage1_seconds"], "seconds": time.time() - t0}


def ceiling_key(cfg) -> str:
    """The options of ``cfg`` the ceiling depends on (:func:`mulact.al.reference.reference_key`),
    as canonical JSON."""
    from mulact.al.reference import reference_key

    return json.dumps(reference_key(cfg.to_dict()), sort_keys=True, default=str)


def find_ceiling(results: dict, key: str, seed: int):
    """``(setting name, ceiling record)`` of a ceiling already measured for ``key`` and ``seed``."""
    for name, entry in results["settings"].items():
        rec = entry["runs"].get(str(seed), {}).get("ceiling")
        if rec is not None and rec.get("key") == key and "copied_from" not in rec:
            return name, rec
    return None, None


def cli_args(overrides: dict) -> list[str]:
    """``mulact-train`` flags for ``overrides`` (booleans as ``--x`` / ``--no-x``)."""
    from mulact.config import convert, field_type, flag

    args = []
    for key, value in overrides.items():  # keys already checked by resolve()
        if field_type(key)[0] is bool:
            args.append(flag(key) if convert(key, value) else "--no-" + key.replace("_", "-"))
        else:
            args += [flag(key), str(value)]
    return args


def run_rounds(preset: str, overrides: dict, seed: int, run_dir: str) -> dict:
    """``mulact-train`` under the setting in a child process (resumes an unfinished run dir)."""
    cmd = [sys.executable, "-m", "mulact.cli", "--preset", preset,
           *cli_args({**overrides, "seed": seed, "run_dir": run_dir})]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mulact-train failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    with open(os.path.join(run_dir, "metrics.json")) as fh:
        rounds = json.load(fh)["rounds"]
    keep = ("round", "clicks", "cumulative_clicks", "percent_full_cost", "labeled_regions", "labeled_images",
            "miou", "stage1_miou", "stage2_miou", "stage1_seconds", "stage2_seconds")
    return {"rounds": [{k: m[k] for k in keep if k in m} for m in rounds], "seconds": time.time() - t0}


# -- results -------------------------------------------------------------------------------
def load_results(path: str) -> dict:
    if not os.path.isfile(path):
        return {"settings": {}}
    with open(path) as fh:
        return json.load(fh)


def save_results(path: str, results: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=True, default=float)
    os.replace(tmp, path)


def _mean_sd(values: list[float]) -> str:
    values = [100 * v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _pct(value, digits: int = 1) -> str:
    """An mIoU in %, or ``n/a`` when the run did not measure it (no validation masks: ``None``)."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}"


def _round_miou(run: dict, r: int, key: str = "miou"):
    rounds = run.get("rounds", {}).get("rounds", [])
    return next((m.get(key) for m in rounds if m["round"] == r), None)


def report(results: dict) -> str:
    """Markdown: per setting, mean ± sd over seeds of ceiling, round 1, last round and the gaps."""
    lines = ["# Regime probe: full-supervision ceiling vs AL rounds", "",
             "Per setting (preset + overrides) and seed: `ceiling` = the round's stage-1 model, schedule and "
             "augmentation trained on every pixel of the train split (plain CE on the ground truth); "
             "r1 / rN = the run's reported mIoU after round 1 and after its last round (stage 1 when stage 2 "
             "is off). Values are mean ± sd over the seeds listed. Wall times are per seed, on the machine and "
             "load recorded (load = 1-minute load average at the start).", "",
             "| setting | overrides | seeds | ceiling | r1 | rN (N) | ceiling − r1 | rN − r1 | ceiling − rN "
             "| % full cost r1 → rN | wall ceiling / rounds (s) | load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for name, entry in results["settings"].items():
        runs = entry["runs"]
        seeds = sorted(runs, key=int)
        ceil = [runs[s].get("ceiling", {}).get("miou") for s in seeds]
        last_round = max((m["round"] for s in seeds for m in runs[s].get("rounds", {}).get("rounds", [])), default=0)
        r1 = [_round_miou(runs[s], 1) for s in seeds]
        rn = [_round_miou(runs[s], last_round) for s in seeds]

        def diffs(a, b):
            return [x - y if x is not None and y is not None else None for x, y in zip(a, b)]

        pct = ""
        first = runs[seeds[0]].get("rounds", {}).get("rounds", [])
        if first:
            pct = f"{first[0]['percent_full_cost']:.1f} → {first[-1]['percent_full_cost']:.1f}"
        def seconds(rec, part):
            c = rec.get(part, {})
            if "copied_from" in c:
                return f"= `{c['copied_from']}`"
            return f"{c['seconds']:.0f}" if "seconds" in c else "–"

        wall = "; ".join(f"{seconds(runs[s], 'ceiling')} / {seconds(runs[s], 'rounds')}" for s in seeds)
        load = "; ".join(f"{runs[s].get('load', math.nan):.1f}" for s in seeds)
        ov = ", ".join(f"{k}={v}" for k, v in entry["overrides"].items()) or "–"
        lines.append(f"| `{name}` | {ov} | {', '.join(seeds)} | {_mean_sd(ceil)} | {_mean_sd(r1)} | "
                     f"{_mean_sd(rn)}{f' ({last_round})' if last_round else ''} | {_mean_sd(diffs(ceil, r1))} | {_mean_sd(diffs(rn, r1))} | "
                     f"{_mean_sd(diffs(ceil, rn))} | {pct} | {wall} | {load} |")
    curve_rows = []
    for name, entry in results["settings"].items():
        for s in sorted(entry["runs"], key=int):
            curve = entry["runs"][s].get("curve", {})
            if curve:
                ceil = entry["runs"][s].get("ceiling", {}).get("miou")
                cells = ", ".join(
                    f"{int(b)} clicks ({m['percent_full_cost']:.1f} %): {_pct(m['miou'])} ({m['seconds']:.0f} s)"
                    for b, m in sorted(curve.items(), key=lambda kv: int(kv[0])))
                curve_rows.append(f"| `{name}` | {s} | {'–' if ceil is None else _pct(ceil)} | {cells} |")
    if curve_rows:
        lines += ["", "One-round runs (random selection, stage 1 unless the setting turns stage 2 on): mIoU (%) "
                  "against clicks, beside the ceiling of the same seed.", "",
                  "| setting | seed | ceiling | clicks (% full cost): mIoU (wall) |", "|---|---|---:|---|", *curve_rows]
    lines += ["", "Per-round mIoU (%) of every run (reported model; stage-1 in brackets when stage 2 is on):", ""]
    for name, entry in results["settings"].items():
        for s in sorted(entry["runs"], key=int):
            rounds = entry["runs"][s].get("rounds", {}).get("rounds", [])
            if not rounds:
                continue
            cells = []
            for m in rounds:
                cell = f"r{m['round']} {_pct(m['miou'])}"
                if "stage2_miou" in m:
                    cell += f" [{_pct(m['stage1_miou'])}]"
                cells.append(cell + f" @{m['cumulative_clicks']}")
            lines.append(f"- `{name}` seed {s}: " + ", ".join(cells))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="setting name (key in results.json)")
    p.add_argument("--preset", default="demo", help="mulact-train preset the overrides apply to")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="OPTION=VALUE",
                   help="a mulact-train option of this setting (repeatable)")
    p.add_argument("--no-stage2", action="store_true", help="shorthand for --set stage2=false (rounds only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--mode", choices=MODES, nargs="+", default=["ceiling", "rounds"],
                   help="ceiling: full supervision; rounds: the AL run; curve: one-round runs (random "
                        "selection) at each of --budgets, mIoU against clicks without the rounds in between")
    p.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="curve: clicks of each one-round run (default: the setting's budget and 4x it)")
    p.add_argument("--out", default=DEFAULT_OUT, help="directory of results.json and report.md")
    p.add_argument("--runs-dir", default=os.path.join("runs", "probe"), help="where run directories go")
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from results.json")
    args = p.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        if args.no_stage2:
            overrides["stage2"] = "false"
        for seed in args.seeds:  # every option checked before any work
            resolve(args.preset, overrides, seed, os.path.join(args.runs_dir, args.name, f"seed_{seed}"))
    except ValueError as err:
        p.error(str(err))
    path = os.path.join(args.out, "results.json")
    results = load_results(path)
    if not args.report_only:
        entry = results["settings"].setdefault(args.name, {"preset": args.preset, "overrides": overrides, "runs": {}})
        if entry["overrides"] != overrides or entry.get("preset") != args.preset:
            p.error(f"--name {args.name}: results.json holds it with other options "
                    f"({entry.get('preset')}, {entry['overrides']}); pick another name")
        for seed in args.seeds:
            run_dir = os.path.join(args.runs_dir, args.name, f"seed_{seed}")
            rec = entry["runs"].setdefault(str(seed), {})
            want_ceiling = "ceiling" in args.mode and "ceiling" not in rec
            want_rounds = "rounds" in args.mode and "rounds" not in rec
            budgets = args.budgets or [resolve(args.preset, overrides, seed, run_dir).budget * k for k in (1, 4)]
            want_curve = [b for b in budgets if "curve" in args.mode and str(b) not in rec.get("curve", {})]
            if want_ceiling or want_rounds or want_curve:
                rec["load"] = os.getloadavg()[0]
            if want_ceiling:
                cfg = resolve(args.preset, overrides, seed, run_dir)
                key = ceiling_key(cfg)
                origin, known = find_ceiling(results, key, seed)
                if known is not None:
                    rec["ceiling"] = {**known, "copied_from": origin, "seconds": 0.0, "train_seconds": 0.0}
                else:
                    rec["ceiling"] = {**train_ceiling(cfg, os.path.join(run_dir + "-ceiling")), "key": key}
                print(f"{args.name} seed {seed}: ceiling mIoU {_pct(rec['ceiling']['miou'], 2)} "
                      f"({rec['ceiling']['seconds']:.0f}s)", flush=True)
                save_results(path, results)
            if want_rounds:
                rec["rounds"] = run_rounds(args.preset, overrides, seed, run_dir)
                print(f"{args.name} seed {seed}: rounds mIoU "
                      + " ".join(_pct(m["miou"], 2) for m in rec["rounds"]["rounds"])
                      + f" ({rec['rounds']['seconds']:.0f}s)", flush=True)
                save_results(path, results)
            for b in want_curve:
                one = run_rounds(args.preset, {**overrides, "rounds": 1, "budget": b}, seed, f"{run_dir}-curve{b}")
                rec.setdefault("curve", {})[str(b)] = {**one["rounds"][0], "seconds": one["seconds"]}
                print(f"{args.name} seed {seed}: one round of {b} clicks, mIoU {_pct(one['rounds'][0]['miou'], 2)} "
                      f"({one['seconds']:.0f}s)", flush=True)
                save_results(path, results)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "report.md"), "w") as fh:
        fh.write(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
