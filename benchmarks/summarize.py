"""Turn a pytest-benchmark JSON file into the markdown tables kept in ``benchmarks/results/``.

Usage::

    python -m pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python benchmarks/summarize.py bench.json > benchmarks/results/<machine>_<date>.md

One table per benchmark group (an op at one shape), one row per provider, with min / median
times, the achieved GB/s the benchmark recorded in ``extra_info`` and how many times slower
than ``mulact`` each provider is (by median); for the ``compiled`` provider, its compile time.
"""
from __future__ import annotations

import json
import platform
import re
import sys
from collections import defaultdict


def _provider(bench: dict) -> str:
    params = bench.get("params") or {}
    if "provider" in params:
        return str(params["provider"])
    match = re.search(r"\[([^\]-]+)", bench["name"])
    return match.group(1) if match else bench["name"]


def _machine(data: dict) -> str:
    info = data.get("machine_info", {})
    cpu = info.get("cpu", {})
    parts = [
        f"CPU: {cpu.get('brand_raw', platform.processor() or '?')}, {cpu.get('count', '?')} logical cores",
        f"Python {info.get('python_version', platform.python_version())}",
        f"date {data.get('datetime', '?')[:19]}",
    ]
    try:
        import torch
        import triton

        parts.insert(1, f"torch {torch.__version__}, triton {triton.__version__}")
    except ImportError:
        pass
    return "; ".join(parts)


def summarize(data: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        groups[bench.get("group") or bench["name"].split("[")[0]].append(bench)
    lines = [f"Machine: {_machine(data)}", ""]
    for group, benches in groups.items():
        base = next((b for b in benches if _provider(b) == "mulact"), None)
        lines += [f"### {group}", "",
                  "| provider | min (ms) | median (ms) | GB/s | × slower than mulact (median) | compile (s) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for bench in sorted(benches, key=lambda b: b["stats"]["median"]):
            stats, extra = bench["stats"], bench.get("extra_info", {})
            gbs = extra.get("GB/s", extra.get("gb_per_s", ""))
            ratio = f"{stats['median'] / base['stats']['median']:.1f}" if base else ""
            compile_s = extra.get("compile_s") or ""
            lines.append(f"| {_provider(bench)} | {stats['min'] * 1e3:.2f} | {stats['median'] * 1e3:.2f} | {gbs} | {ratio} "
                         f"| {compile_s} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        print(summarize(json.load(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
