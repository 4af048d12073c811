"""Registers, spills and shared memory of every Triton kernel, compiled ahead of time for sm_90.

    python benchmarks/kernel_metadata.py            # writes benchmarks/results/kernel_metadata_sm90.md/.json

No GPU needed: it compiles the cases of ``tests/test_triton_compile.py`` (every launched
kernel with the dtypes, constexprs and warps its launcher passes, each design of
``kernels/_tuning.py::DESIGNS``) in a fresh process with the interpreter off, and reads
registers, spill stores/loads and stack from ``ptxas -v`` on each kernel's PTX (the ptxas
Triton ships) and the shared memory from Triton's compiled metadata. Regenerate it whenever a
kernel or a design changes; the compile test fails on any spill.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILE_TESTS = ROOT / "tests" / "test_triton_compile.py"


def collect(timeout: float = 1800.0) -> list[dict]:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1", TRITON_CACHE_DIR=cache,
                   MULACT_COMPILE_RESOURCES="1")
        done = subprocess.run([sys.executable, str(COMPILE_TESTS)], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not records:
        raise SystemExit(f"compile process failed (rc={done.returncode}): {done.stderr[-3000:]}")
    return records


def render(records: list[dict], stamp: str) -> str:
    import triton

    lines = [f"# Triton kernels compiled for sm_90: registers, spills, shared memory ({stamp})", "",
             f"triton {triton.__version__}; produced by `python benchmarks/kernel_metadata.py` from the cases of "
             "`tests/test_triton_compile.py` (each kernel with its launcher's dtypes, constexprs and warps; the "
             "design named in the case, `kernels/_tuning.py::DESIGNS`, default tile). Registers per thread and "
             "spills from `ptxas -v`; shared memory (bytes per program) from Triton's metadata. An H100/H200 SM "
             "has 65,536 registers: a 128-thread program at 64 registers leaves room for 8 programs per SM, at "
             "128 registers for 4.", "",
             "| case | warps | registers | spill stores / loads (B) | stack (B) | shared (B) | compile s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        if not r.get("ok"):
            lines.append(f"| {r['case']} | | | compile failed: {r.get('error', '')[:120]} | | | |")
            continue
        lines.append(f"| {r['case']} | {r['num_warps']} | {r['n_regs']} | {r['spill_stores']} / {r['spill_loads']} | "
                     f"{r['stack']} | {r['shared']} | {r['seconds']} |")
    spills = [r["case"] for r in records if r.get("ok") and (r["spill_stores"] or r["spill_loads"])]
    lines += ["", f"Spills: {', '.join(spills) if spills else 'none'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    records = collect()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_metadata_sm90.json").write_text(json.dumps({"date": stamp, "cases": records}, indent=1))
    (args.out / "kernel_metadata_sm90.md").write_text(render(records, stamp))
    print(render(records, stamp))
    return records


if __name__ == "__main__":
    main()
