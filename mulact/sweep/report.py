"""``mulact-sweep report DIR``: per-round statistics over seeds, paired differences against
the baseline variant, as Markdown + CSV, and a plot of mIoU vs cumulative clicks and vs % of
full-annotation cost with a shaded confidence band per variant.

Reads only what the runs write (``runs/<variant>/seed_<s>/metrics.json``, see README,
"Outputs") and the sweep's ``sweep.yaml``, so a report can be made of a sweep that is still
running or was stopped; missing runs and rounds are listed in the report.

Files (in ``DIR/report/``): ``report.md``, ``rounds.csv`` (per variant and round),
``paired.csv`` (per variant, round and metric: difference to the baseline), ``runs.csv``
(every run's raw per-round numbers), ``miou_vs_clicks.png``. mIoU values are in percent.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os

from mulact.runstore import atomic_write

from .files import read_json as _read_json
from .runner import recorded_rounds, run_dir_of
from .spec import SweepFileError, SweepSpec, parse_sweep
from .stats import paired_difference, summarize

__all__ = ["collect", "write_report", "METRICS"]

# (key in metrics.json, label); mIoU = the run's reported model (stage 2 when on).
METRICS = (("miou", "mIoU"), ("stage1_miou", "stage-1 mIoU"), ("stage2_miou", "stage-2 mIoU"),
           ("percent_of_reference", "% of full supervision"))
# already in percent in metrics.json (the others are fractions)
_PERCENT_KEYS = {"percent_of_reference"}


def load_spec(sweep_dir: str) -> SweepSpec:
    path = os.path.join(sweep_dir, "sweep.yaml")
    if not os.path.isfile(path):
        raise SweepFileError(f"report: {sweep_dir!r} is not a sweep directory (no sweep.yaml; "
                             f"run mulact-sweep FILE --dir {sweep_dir} first)")
    with open(path) as fh:
        return parse_sweep(fh.read(), source=path)


def collect(sweep_dir: str, spec: SweepSpec) -> tuple[list[dict], dict]:
    """Per-round rows of every run, and ``{(variant, seed): rounds completed}``."""
    rows, done = [], {}
    for variant in spec.variants:
        for seed in spec.seeds:
            rounds = recorded_rounds(run_dir_of(sweep_dir, variant, seed))
            done[(variant, seed)] = len(rounds)
            for m in rounds:
                row = {"variant": variant, "seed": seed, "round": int(m["round"]), "clicks": m["clicks"],
                       "cumulative_clicks": m["cumulative_clicks"],
                       "percent_full_cost": math.nan if m.get("percent_full_cost") is None else m["percent_full_cost"]}
                for key, _ in METRICS:
                    v = m.get(key)
                    row[key] = math.nan if v is None else (v if key in _PERCENT_KEYS else 100.0 * v)
                ref = m.get("reference_miou")
                row["reference_miou"] = math.nan if ref is None else 100.0 * ref
                rows.append(row)
    return rows, done


def _table(rows, spec, confidence):
    by = {}
    for r in rows:
        by.setdefault((r["variant"], r["round"]), []).append(r)
    stats, paired = [], []
    for variant in spec.variants:
        for t in sorted({k[1] for k in by if k[0] == variant}):
            rs = by[(variant, t)]
            rec = {"variant": variant, "round": t, "n": len(rs),
                   "cumulative_clicks": summarize([r["cumulative_clicks"] for r in rs]).mean,
                   "percent_full_cost": summarize([r["percent_full_cost"] for r in rs]).mean}
            for key, _ in METRICS:
                s = summarize([r[key] for r in rs], confidence)
                rec.update({f"{key}_n": s.n, f"{key}_mean": s.mean, f"{key}_std": s.std,
                            f"{key}_ci_low": s.low, f"{key}_ci_high": s.high})
            stats.append(rec)
            base = by.get((spec.baseline, t), [])
            if variant == spec.baseline or not base:
                continue
            for key, _ in METRICS:
                d = paired_difference({r["seed"]: r[key] for r in rs}, {r["seed"]: r[key] for r in base}, confidence)
                if d.n == 0:
                    continue
                paired.append({"variant": variant, "baseline": spec.baseline, "round": t, "metric": key, "n": d.n,
                               "mean_difference": d.mean, "std": d.std, "ci_low": d.low, "ci_high": d.high,
                               "p_value": d.p_value})
    return stats, paired


def _table1(rows, spec, confidence, fraction: float = 0.95) -> list[dict]:
    """Per variant: the full-supervision reference over seeds and the paper's Table 1 figure —
    clicks (and % of full cost) to reach ``fraction`` of the seed's reference, per seed
    (:func:`mulact.al.reference.clicks_to_fraction`), summarized over the seeds that reach it."""
    from mulact.al.reference import clicks_to_fraction

    out = []
    for variant in spec.variants:
        per_seed = {}
        for r in sorted((r for r in rows if r["variant"] == variant), key=lambda r: (r["seed"], r["round"])):
            per_seed.setdefault(r["seed"], []).append(r)
        refs, reached, clicks, pct, last_share = [], [], [], [], []
        for seed, rs in per_seed.items():
            ref = rs[0]["reference_miou"]
            if math.isnan(ref):
                continue
            refs.append(ref)
            recs = [{"round": r["round"], "miou": None if math.isnan(r["miou"]) else r["miou"],
                     "cumulative_clicks": r["cumulative_clicks"], "percent_full_cost": r["percent_full_cost"]}
                    for r in rs]
            res = clicks_to_fraction(recs, ref, fraction)
            reached.append((seed, res))
            if res["reached"]:
                clicks.append(res["clicks"])
                pct.append(res["percent_full_cost"] if res["percent_full_cost"] is not None else math.nan)
            last_share.append(rs[-1]["percent_of_reference"])
        if not refs:
            continue
        out.append({"variant": variant, "seeds": len(refs), "reference": summarize(refs, confidence),
                    "reached": sum(1 for _, r in reached if r["reached"]),
                    "at_most": sum(1 for _, r in reached if r.get("bound") == "at most"),
                    "clicks": summarize(clicks, confidence), "percent_full_cost": summarize(pct, confidence),
                    "last_share": summarize(last_share, confidence), "per_seed": reached})
    return out


def _csv(path, rows, cols) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write(path, buf.getvalue().encode())


def _fmt(v, digits=2):
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(lo, hi):
    return "–" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]"


def write_report(sweep_dir: str, confidence: float = 0.95, echo=print, baseline: str | None = None) -> str:
    """Write the report of ``sweep_dir`` into ``sweep_dir/report``; returns that directory.

    ``baseline`` takes the paired differences against another variant than the sweep file's
    (e.g. stage 1 + 2 against stage 1 in the ``labels`` sweep); that report goes to
    ``sweep_dir/report_vs_<baseline>``, leaving the main one as it is."""
    spec = load_spec(sweep_dir)
    out = os.path.join(sweep_dir, "report")
    if baseline is not None and baseline != spec.baseline:
        if baseline not in spec.variants:
            raise SweepFileError(f"report: --baseline {baseline!r} is not a variant of {sweep_dir}; expected one of "
                                 f"{list(spec.variants)}")
        spec = dataclasses.replace(spec, baseline=baseline)
        out = os.path.join(sweep_dir, f"report_vs_{baseline}")
    rows, done = collect(sweep_dir, spec)
    os.makedirs(out, exist_ok=True)
    stats, paired = _table(rows, spec, confidence)
    metric_cols = [f"{k}_{s}" for k, _ in METRICS for s in ("n", "mean", "std", "ci_low", "ci_high")]
    _csv(os.path.join(out, "rounds.csv"), stats,
         ["variant", "round", "n", "cumulative_clicks", "percent_full_cost", *metric_cols])
    _csv(os.path.join(out, "paired.csv"), paired,
         ["variant", "baseline", "round", "metric", "n", "mean_difference", "std", "ci_low", "ci_high", "p_value"])
    _csv(os.path.join(out, "runs.csv"), rows,
         ["variant", "seed", "round", "clicks", "cumulative_clicks", "percent_full_cost",
          *[k for k, _ in METRICS], "reference_miou"])
    shared_path = os.path.join(sweep_dir, "shared.json")
    shared = _read_json(shared_path)
    table1 = _table1(rows, spec, confidence)
    md = _markdown(spec, stats, paired, done, shared, confidence, table1)
    atomic_write(os.path.join(out, "report.md"), md.encode())
    if stats:
        refs = {r["seed"]: r["reference_miou"] for r in rows if not math.isnan(r["reference_miou"])}
        _plot(os.path.join(out, "miou_vs_clicks.png"), spec, stats, confidence,
              reference=summarize(list(refs.values())).mean if refs else None)
    echo(f"mulact-sweep: report written to {out} (report.md, rounds.csv, paired.csv, runs.csv"
         f"{', miou_vs_clicks.png' if stats else ''})")
    return out


def _markdown(spec, stats, paired, done, shared, confidence, table1=()) -> str:
    pct = f"{100 * confidence:g} %"
    rounds = {v: spec.configs[(v, spec.seeds[0])]["rounds"] for v in spec.variants}
    complete = [k for k, n in done.items() if n >= rounds[k[0]]]
    incomplete = [f"{v} seed {s} ({n}/{rounds[v]} rounds)" for (v, s), n in done.items() if n < rounds[v]]
    has_stage2 = any(spec.configs[(v, spec.seeds[0])]["stage2"] for v in spec.variants)
    L = [f"# Sweep `{spec.name}`", ""]
    if spec.description:
        L += [spec.description, ""]
    base = ", ".join(f"`{k}={v}`" for k, v in spec.base.items()) or "none"
    L += [f"Preset `{spec.preset or 'as mulact-train'}`; base options: {base}; seeds: "
          f"{', '.join(map(str, spec.seeds))}; baseline: `{spec.baseline}`. "
          f"Runs complete: {len(complete)}/{len(done)}."]
    if incomplete:
        L += ["", "Incomplete runs (their rounds so far are included): " + "; ".join(incomplete) + "."]
    L += ["", "| variant | options |", "|---|---|"]
    for v, opts in spec.variants.items():
        L.append(f"| `{v}` | {', '.join(f'`{k}={val}`' for k, val in opts.items()) or '(base)'} |")
    L += ["", f"## mIoU (%) per round: mean ± std over seeds, {pct} t-interval", "",
          "mIoU is the reported model of each round (stage 2 where stage 2 is on)."]
    head = "| variant | round | seeds | clicks (cum.) | % full | mIoU | ± std | " + pct + " CI |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---|"
    if has_stage2:
        head += " stage-1 mIoU | " + pct + " CI |"
        sep += "---:|---|"
    has_ref = any(r["percent_of_reference_n"] for r in stats)
    if has_ref:
        head += " % of full supervision | " + pct + " CI |"
        sep += "---:|---|"
    L += ["", head, sep]
    for r in stats:
        line = (f"| `{r['variant']}` | {r['round']} | {r['n']} | {r['cumulative_clicks']:.0f} | "
                f"{r['percent_full_cost']:.2f} | {_fmt(r['miou_mean'])} | {_fmt(r['miou_std'])} | "
                f"{_ci(r['miou_ci_low'], r['miou_ci_high'])} |")
        if has_stage2:
            line += f" {_fmt(r['stage1_miou_mean'])} | {_ci(r['stage1_miou_ci_low'], r['stage1_miou_ci_high'])} |"
        if has_ref:
            line += (f" {_fmt(r['percent_of_reference_mean'], 1)} | "
                     f"{_ci(r['percent_of_reference_ci_low'], r['percent_of_reference_ci_high'])} |")
        L.append(line)
    if table1:
        L += ["", "## Against full supervision (the paper's Table 1 figure)", "",
              "Reference = the seed's `--labeling full` run (`--reference`): stage 1's model, schedule and "
              "augmentation trained on every pixel of the train split. Clicks to 95 % = the cumulative clicks at "
              "which the run's mIoU reaches 95 % of its seed's reference, interpolated between rounds; reached "
              "in round 1 it is round 1's clicks (an upper bound, counted under 'in round 1'). Mean over the seeds "
              f"that reach it, {pct} t-interval.", "",
              "| variant | seeds | reference mIoU | " + pct + " CI | last round, % of reference | " + pct
              + " CI | reached 95 % | in round 1 | clicks to 95 % | " + pct + " CI | % full cost |",
              "|---|---:|---:|---|---:|---|---:|---:|---:|---|---:|"]
        for t in table1:
            ref, last, ck, pc = t["reference"], t["last_share"], t["clicks"], t["percent_full_cost"]
            L.append(f"| `{t['variant']}` | {t['seeds']} | {_fmt(ref.mean)} | {_ci(ref.low, ref.high)} | "
                     f"{_fmt(last.mean, 1)} | {_ci(last.low, last.high)} | {t['reached']}/{t['seeds']} | "
                     f"{t['at_most']} | {_fmt(ck.mean, 0) if ck.n else 'not reached'} | {_ci(ck.low, ck.high)} | "
                     f"{_fmt(pc.mean)} |")
    L += ["", f"## Paired differences against `{spec.baseline}` (same seed), mIoU points", "",
          f"Δ = variant − baseline per seed; {pct} t-interval and paired t-test p-value over the seeds. "
          "An interval that excludes 0 is a difference the seeds resolve.", "",
          "| variant | round | metric | pairs | Δ mean | ± std | " + pct + " CI | p |",
          "|---|---:|---|---:|---:|---:|---|---:|"]
    labels = dict(METRICS)
    for d in paired:
        if d["metric"] in ("stage2_miou", "percent_of_reference") or (d["metric"] == "stage1_miou" and not has_stage2):
            continue
        L.append(f"| `{d['variant']}` | {d['round']} | {labels[d['metric']]} | {d['n']} | {d['mean_difference']:+.2f} | "
                 f"{_fmt(d['std'])} | {_ci(d['ci_low'], d['ci_high'])} | {_fmt(d['p_value'], 3)} |")
    if shared:
        L += ["", "## Shared work", "",
              "Files a run received from another run of the sweep instead of computing them "
              "(identical inputs; see `mulact.sweep.sharing`):", ""]
        for label, what in sorted(shared.items()):
            L.append(f"- `{label}`: " + ", ".join(f"{k} from `{v}`" for k, v in what.items()))
    L += ["", "![mIoU vs clicks](miou_vs_clicks.png)", ""]
    return "\n".join(L)


def _plot(path, spec, stats, confidence, reference=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120, sharey=True)
    for i, variant in enumerate(spec.variants):
        rs = [r for r in stats if r["variant"] == variant]
        if not rs:
            continue
        color = f"C{i % 10}"
        y = [r["miou_mean"] for r in rs]
        lo = [r["miou_ci_low"] for r in rs]
        hi = [r["miou_ci_high"] for r in rs]
        n = min(r["n"] for r in rs)
        for ax, xkey in zip(axes, ("cumulative_clicks", "percent_full_cost")):
            x = [r[xkey] for r in rs]
            ax.plot(x, y, "o-", color=color, label=f"{variant} (n={n})")
            if not all(math.isnan(v) for v in lo):
                ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
    if reference is not None:  # the mean of the seeds' full-supervision references
        for ax in axes:
            ax.axhline(reference, color="0.3", ls="--", lw=1, label="full supervision (mean)")
            ax.axhline(0.95 * reference, color="0.3", ls=":", lw=1, label="95 % of it")
    axes[0].set_xlabel("clicks (cumulative, mean over seeds)")
    axes[1].set_xlabel("% of full-annotation cost")
    axes[0].set_ylabel("mIoU (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{spec.name}: mean over seeds, shaded {100 * confidence:g} % t-interval", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
