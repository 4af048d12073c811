"""Rank the Triton kernels' designs and launch settings on a GPU, one process per candidate.

    python benchmarks/tune_triton.py                  # on a CUDA machine, 6 minutes at most
    python benchmarks/tune_triton.py --cpu --out DIR  # tiny shapes under the interpreter (tests)

A candidate is a launch setting (the knobs of ``kernels/_tuning.py``: ``MULACT_TRITON_TILE``,
``MULACT_TRITON_WARPS``, ``MULACT_TRITON_ARGMAX_RUNS``) plus, for the ops that have several,
a kernel design (``MULACT_TRITON_DESIGN``, the ``DESIGNS`` table of the same module). They are
read when the kernels are imported, so every candidate runs in a fresh process with its
environment and a time cap (``--setting-timeout``). Each process builds the Cityscapes-shape
inputs of ``gpu_check.py`` (4x20x769x769 and 1x20x1024x2048, R = 2048), checks each fused op
against the reference (``rel_err_vs_reference``; a candidate with an error above 1e-4 is
reported and never ranked) and times the ``mulact`` provider of the ops of ``gpu_check.py``
plus ``region_reduce`` max and ``prototype_pseudo_labels`` (stride-4 features) with CUDA events. A design candidate times only the op it changes.
The default runs first, then every other design of every op, then the launch settings, each
started while ``--budget`` allows, so the designs are ranked even on a short lease.

It writes ``<device>_<date>_tuning.md`` and ``.json`` (into ``--out``, default
``benchmarks/results``): per op and shape, every setting's median time, GB/s, % of the peak
bandwidth and speed-up, and the best setting. Like ``gpu_check.py`` it runs on a bare GPU
machine with torch and triton; pytest (for the composites' module imports) comes from
``benchmarks/.carry``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# kernels/_tuning.py's DEFAULTS, spelled out: this script must load before the checkout is on sys.path
# (tests/test_triton_tuning.py checks that the two agree).
DEFAULT = {"tile": 4096, "num_warps": 4, "argmax_runs": 0}
MAX_ERROR = 1e-4
# The op each design table belongs to, as the rows of a child name it.
DESIGN_ROWS = {"region_uncertainty_stats": ["region_uncertainty_stats"],
               "region_reduce": ["region_reduce_mean", "region_reduce_max"],
               "partial_label_loss": ["partial_label_loss"],
               "prototypical_pixel_loss": ["prototypical_pixel_loss"],
               "prototype_pseudo_labels": ["prototype_pseudo_labels"]}


# The argmax's run reduction scans a (classes x pixels) int64 tile with log2(pixels) gathers; its
# sm_90 compile time grows steeply with the tile (bf16, C = 20: 1.2 s at 2048, 12 s at 8192,
# 424 s at 16384; tests/test_triton_compile.py), so it is only paired with tiles up to this.
MAX_RUNS_TILE = 8192


def settings_grid(tiles, warps, runs) -> list[dict]:
    """Every combination (the run reduction only with tiles up to ``MAX_RUNS_TILE``), the default first."""
    grid = [dict(tile=t, num_warps=w, argmax_runs=r) for t, w, r in itertools.product(tiles, warps, runs)
            if not (r and t > MAX_RUNS_TILE)]
    grid.sort(key=lambda s: s != DEFAULT)
    if DEFAULT not in grid:
        grid.insert(0, dict(DEFAULT))
    return grid


def design_candidates(designs: dict, only=None) -> list[dict]:
    """One candidate per non-default design of each op (``designs``: ``kernels/_tuning.py::DESIGNS``),
    at the default launch setting; ``only`` (``op=name`` strings) restricts them."""
    out = []
    for op, table in designs.items():
        for name in list(table)[1:]:
            if only is None or f"{op}={name}" in only:
                out.append(dict(DEFAULT, design={op: name}))
    return out


def label(s: dict) -> str:
    text = f"tile {s['tile']}, {s['num_warps']} warps, argmax runs {'on' if s['argmax_runs'] else 'off'}"
    return text + "".join(f", {op} design {name}" for op, name in s.get("design", {}).items())


def rows_of(s: dict) -> list[str] | None:
    """The child rows a candidate is timed on: a design candidate only its op's; None = all."""
    if not s.get("design"):
        return None
    return [row for op in s["design"] for row in DESIGN_ROWS[op]]


# ------------------------------------------------------------------------------ child process
def _max_case(device: str, shape):
    """region_reduce max over the logits of ``gpu_check._cases`` (its inputs, its seed): the
    check (exact on every design) and the timed call."""
    import torch
    from _partial_label_inputs import stage1_inputs

    from mulact import ops

    B, C, H, W, R = shape
    logits, regions, _ = stage1_inputs(device, B, C, H, W, R)
    values, regions = logits.detach(), regions.to(torch.int32)
    moved = values.numel() * values.element_size() + regions.numel() * 4 + B * R * C * values.element_size()
    fn = lambda: ops.region_reduce(values, regions, R, "max")  # noqa: E731
    return (lambda: (fn(),), lambda: (ops.region_reduce_reference(values, regions, R, "max"),)), (
        {"mulact": fn}, moved, False)


def _pseudo_label_case(device: str, shape):
    """Stage-2 pseudo labels (``expand=True``) on the inputs of ``gpu_check._cases`` and
    stride-4 features (D = 256 on the GPU, 8 under the interpreter). The check compares the
    thresholds and the label counts with the reference, and the labels through ``1 + the
    fraction of pixels whose label differs``: float32 and float64 similarities may order a
    near-tie differently (mulact/ops/prototype_pseudo_labels.py), so a few pixels in millions may
    differ, and a candidate with more than ``MAX_ERROR`` of them is not ranked."""
    import torch
    from _partial_label_inputs import stage1_inputs

    from mulact import ops

    B, C, H, W, R = shape
    d = 8 if device == "cpu" else 256
    logits, regions, labels = stage1_inputs(device, B, C, H, W, R)
    logits, regions = logits.detach(), regions.to(torch.int32)
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(B, d, -(-H // 4), -(-W // 4), generator=g).to(device)
    moved = (feats.numel() * 4 + logits.numel() * logits.element_size() + regions.numel() * 4
             + B * H * W * 8)  # inputs once, labels out
    fn = lambda: ops.prototype_pseudo_labels(feats, logits, regions, labels, temperature=1.0,  # noqa: E731
                                             return_info=True)
    want = {}

    def outputs(labels_and_info, ref_labels):
        out, info = labels_and_info
        differ = (out != ref_labels).double().mean().reshape(1)
        return (info.thresholds.nan_to_num(-7.0), info.num_localized, info.num_expanded, 1.0 + differ)

    def reference():
        if "ref" not in want:
            want["ref"] = ops.prototype_pseudo_labels_reference(feats, logits, regions, labels, temperature=1.0)
        return want["ref"]

    check = (lambda: outputs(fn(), reference()[0]), lambda: outputs(reference(), reference()[0]))
    return check, ({"mulact": fn}, moved, False)


def child(device: str, reps: int, only_rows=None) -> dict:
    gc = runpy.run_path(str(HERE / "gpu_check.py"), run_name="tune_triton_child")
    gc["_prepare_imports"]()
    if device == "cpu":  # the interpreter runs the Triton kernels; without the override the CPU takes C++
        os.environ.setdefault("TRITON_INTERPRET", "1")
        os.environ["MULACT_BACKEND"] = "triton"
    import torch

    from mulact import ops
    from mulact.kernels import _tuning

    rows = []
    for shape in gc["CPU_SHAPES"] if device == "cpu" else gc["GPU_SHAPES"]:
        checks, cases = gc["_cases"](device, shape, "inductor")
        checks["region_reduce_max"], cases["region_reduce_max"] = _max_case(device, shape)
        if only_rows is None or "prototype_pseudo_labels" in only_rows:  # its reference takes seconds
            checks["prototype_pseudo_labels"], cases["prototype_pseudo_labels"] = _pseudo_label_case(device, shape)
        for op, (providers, moved, _) in cases.items():
            if only_rows is not None and op not in only_rows:
                continue
            row = {"op": op, "shape": "x".join(map(str, shape[:4])), "R": shape[4], "bytes": moved}
            try:
                row["rel_err_vs_reference"] = gc["max_relative_error"](*checks[op])
                fn = providers["mulact"]
                fn()
                sec = gc["median_seconds"](fn, device, reps=reps, warmup=2)
                row.update(status="ok", ms=gc["_sig"](sec * 1e3), GBps=gc["_sig"](moved / sec / 1e9),
                           backend=ops.last_backend(op.replace("_mean", "").replace("_max", "")))
            except Exception as exc:
                row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
        del checks, cases
        if device == "cuda":
            torch.cuda.empty_cache()
    return {"settings": _tuning.settings(), "designs": _tuning.designs(), "rows": rows}


# ------------------------------------------------------------------------------ parent
def run_setting(s: dict, device: str, reps: int, timeout: float) -> dict:
    env = dict(os.environ)
    env.update({"MULACT_TRITON_TILE": str(s["tile"]), "MULACT_TRITON_WARPS": str(s["num_warps"]),
                "MULACT_TRITON_ARGMAX_RUNS": str(int(s["argmax_runs"])),
                "MULACT_TRITON_DESIGN": ",".join(f"{op}={name}" for op, name in s.get("design", {}).items())})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--reps", str(reps)]
    if rows_of(s) is not None:
        cmd += ["--rows", *rows_of(s)]
    if device == "cpu":
        cmd.append("--cpu")
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"settings": s, "status": f"timed out after {timeout:.0f}s", "rows": []}
    seconds = round(time.monotonic() - start, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"settings": s, "status": f"exit {proc.returncode}: {proc.stderr[-600:]}", "rows": [], "seconds": seconds}
    result = json.loads(lines[-1])
    knobs = {k: v for k, v in s.items() if k != "design"}
    designs_ok = all(result["designs"].get(op) == name for op, name in s.get("design", {}).items())
    if result["settings"] != knobs or not designs_ok:  # the knobs did not reach the kernels: never rank such a run
        return {"settings": s, "status": f"knobs not applied: the child ran {result['settings']}, "
                f"{result['designs']}", "rows": [], "seconds": seconds}
    return {"settings": s, "status": "ok", "rows": result["rows"], "seconds": seconds}


def rank(results: list[dict], peak: float | None) -> list[dict]:
    """Per (op, shape): every setting's time, GB/s, % of peak and speed-up vs the default."""
    table = {}
    for res in results:
        for row in res["rows"]:
            key = (row["op"], row["shape"], row["R"])
            entry = dict(settings=res["settings"], **{k: row.get(k) for k in ("status", "ms", "GBps",
                                                                            "rel_err_vs_reference")})
            if peak and row.get("GBps"):
                entry["pct_of_peak"] = round(100 * row["GBps"] * 1e9 / peak, 2)
            table.setdefault(key, []).append(entry)
    out = []
    for (op, shape, r), entries in table.items():
        default = next((e for e in entries if e["settings"] == DEFAULT and e.get("ms")), None)
        usable = [e for e in entries if e.get("ms") and isinstance(e.get("rel_err_vs_reference"), float)
                  and e["rel_err_vs_reference"] <= MAX_ERROR]
        for e in entries:
            if default and e.get("ms"):
                e["speedup_vs_default"] = round(default["ms"] / e["ms"], 3)
        best = min(usable, key=lambda e: e["ms"]) if usable else None
        out.append({"op": op, "shape": shape, "R": r, "entries": entries,
                    "best": best["settings"] if best else None})
    return out


def render(report: dict) -> str:
    lines = [f"# Triton designs and launch settings, {report['device'].get('name')} ({report['date']})", "",
             f"torch {report['device'].get('torch')}, triton {report['device'].get('triton')}; "
             f"peak bandwidth {report['peak_GBps']} GB/s; {report['reps']} timed calls per setting (median). "
             f"Candidates with a relative error above {MAX_ERROR:g} against the reference are never ranked; a "
             "design candidate (kernels/_tuning.py::DESIGNS) runs at the default launch setting and times only "
             "its op.", ""]
    for block in report["ranking"]:
        lines += [f"## {block['op']} {block['shape']} R={block['R']}", "",
                  f"Best: {label(block['best']) if block['best'] else 'none usable'}", "",
                  "| setting | ms | GB/s | % of peak | speed-up vs default | rel. error |", "|---|---:|---:|---:|---:|---:|"]
        for e in sorted(block["entries"], key=lambda e: e.get("ms") or float("inf")):
            lines.append(f"| {label(e['settings'])} | {e.get('ms', e.get('status'))} | {e.get('GBps', '')} | "
                         f"{e.get('pct_of_peak', '')} | {e.get('speedup_vs_default', '')} | "
                         f"{e.get('rel_err_vs_reference', '')} |")
        lines.append("")
    failed = [r for r in report["settings_run"] if r["status"] != "ok"]
    if failed:
        lines += ["## Settings that did not run", ""] + [f"- {label(r['settings'])}: {r['status']}" for r in failed]
    skipped = report.get("skipped_for_budget", [])
    if skipped:
        lines += ["", f"Not started (time budget): {len(skipped)} settings."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="tiny shapes under TRITON_INTERPRET=1 (exercises the script)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--budget", type=float, default=360.0, help="seconds; no candidate is started after it runs out")
    p.add_argument("--tiles", type=int, nargs="+", default=[4096, 2048, 8192, 16384])
    p.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    p.add_argument("--argmax-runs", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--setting-timeout", type=float, default=120.0,
                   help="seconds one setting's process may take (compiles included) before it is stopped")
    p.add_argument("--designs", nargs="*", default=None,
                   help="op=design candidates to rank (default: every non-default design of kernels/_tuning.py)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", nargs="+", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = "cpu" if args.cpu else "cuda"
    if args.child:
        print(json.dumps(child(device, args.reps, args.rows)))
        return None

    gc = runpy.run_path(str(HERE / "gpu_check.py"), run_name="tune_triton_parent")
    gc["_prepare_imports"]()
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or pass --cpu to exercise the script")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    report = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "reps": args.reps}
    gc["section_device"](report, device)
    dev = report["device"]
    peak = (dev.get("peak_bandwidth_table_GBps") or dev.get("copy_GBps") or 0) * 1e9 or None
    report["peak_GBps"] = peak / 1e9 if peak else None
    end = time.monotonic() + args.budget
    from mulact.kernels import DESIGNS

    settings = settings_grid(args.tiles, args.warps, args.argmax_runs)
    grid = settings[:1] + design_candidates(DESIGNS, args.designs) + settings[1:]
    results, skipped = [], []
    for s in grid:
        left = end - time.monotonic()
        if left < 15 and results:
            skipped.append(s)
            continue
        results.append(run_setting(s, device, args.reps, timeout=max(min(left, args.setting_timeout), 30.0)))
        print(f"{label(s)}: {results[-1]['status'][:120]} ({results[-1].get('seconds', '?')}s)", flush=True)
    report.update(settings_run=results, skipped_for_budget=skipped, ranking=rank(results, peak))
    name = dev.get("name") or device
    stem = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") + f"_{report['date'][:10]}_tuning"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{stem}.md").write_text(render(report))
    report["files"] = [str(args.out / f"{stem}.{ext}") for ext in ("md", "json")]
    print(render(report))
    return report


if __name__ == "__main__":
    main()
