"""One-shot GPU check: tests, Cityscapes-shape benchmarks, memory and a training smoke.

    python benchmarks/gpu_check.py                 # on a CUDA machine, ~8 minutes at most
    python benchmarks/gpu_check.py --cpu --out DIR # tiny shapes on the CPU (what the tests run)

It writes ``benchmarks/results/<device>_<date>.md`` and ``.json`` (or into ``--out``), after
every section, so a run cut short still leaves what it measured. Sections, in order of
value, each recorded as done / failed / skipped with the reason:

1. device: name, torch/triton versions, peak DRAM bandwidth from a table by device name, and
   the bandwidth a device-to-device copy achieves;
2. benchmarks at 4×20×769×769 and 1×20×1024×2048 (R = 2048): statistics, partial-label loss
   fwd+bwd, prototypical pixel loss fwd+bwd, region mean; providers ``mulact`` (Triton),
   ``reference``, ``composite`` (plain torch, from the benchmark suites) and ``compiled``
   (that composite under ``torch.compile``, compiled once before the timing; compile time
   recorded). Per provider: median time, GB/s over the bytes the op must move, % of peak,
   and for the losses the peak extra memory of one fwd+bwd.
   Before timing, the fused op's outputs (and gradients) are compared with the reference's
   (``rel_err_vs_reference``, a norm ratio). The benchmarks leave ``--reserve`` seconds of the
   budget to the sections after them;
3. a training smoke: the demo preset's model (DeepLabV3+ ResNet-18, 64 decoder channels) on
   synthetic 4×3×128×256 batches, bfloat16 autocast, AdamW, the paper's loss, a few iterations;
4. the Cityscapes-scale rehearsal (``cityscapes_rehearsal.py``): per-step time and peak memory
   of acquisition, one training iteration (R50, batch 4, crop 769), pseudo labels and
   evaluation at 1024×2048, written as ``cityscapes_rehearsal_cuda.md`` / ``.json``. SEEDS needs
   opencv-contrib; where ``cv2.ximgproc`` is missing the 32-px grid stands in (same region count);
5. the CUDA tests (the ``triton`` cases of the op tests, the dispatch and status tests), with
   what is left of the budget.

Bare machine. Only torch and triton are needed for sections 1–2 (the C++ extension is not
used on CUDA, and ``kernels/`` is loaded as ``mulact.kernels`` from the checkout when mulact
is not installed). Section 2's composites and section 5 need pytest; sections 3–4 need
segmentation-models-pytorch, and ``mulact.data`` needs cityscapesscripts (its label table).
Carry them as a target directory, which this script puts on ``sys.path``::

    pip install --no-deps --target benchmarks/.carry pytest pluggy iniconfig packaging \
        segmentation-models-pytorch timm huggingface_hub safetensors cityscapesscripts   # carry "benchmarks/.carry"

A missing one turns its section into "skipped" with the import error, never a crash.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Peak DRAM bandwidth (bytes/s) by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_BANDWIDTH = [
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM / HBM3
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # 40 GB parts
    ("L40S", 0.864e12),
    ("L40", 0.864e12),
    ("L4", 0.300e12),
    ("A10", 0.600e12),
    ("RTX 4090", 1.008e12),
    ("RTX 3090", 0.936e12),
    ("V100", 0.900e12),
    ("T4", 0.320e12),
]

GPU_SHAPES = [(4, 20, 769, 769, 2048), (1, 20, 1024, 2048, 2048)]
CPU_SHAPES = [(1, 5, 24, 32, 16)]
OPS = ["region_uncertainty_stats", "partial_label_loss", "prototypical_pixel_loss", "region_reduce_mean"]
PROVIDERS = ["mulact", "reference", "composite", "compiled"]


# ------------------------------------------------------------------------------ environment
def _prepare_imports() -> None:
    """Make ``mulact`` and ``mulact.kernels`` importable from the checkout, plus the carried
    packages and the benchmark helpers."""
    carry = HERE / ".carry"
    if carry.is_dir():
        sys.path.insert(0, str(carry))
    sys.path.insert(0, str(HERE))
    if importlib.util.find_spec("mulact") is None:
        sys.path.insert(0, str(ROOT))
    try:
        importlib.import_module("mulact.kernels")
    except ImportError:  # not installed: kernels/ is mapped to mulact.kernels by setup.py only
        spec = importlib.util.spec_from_file_location("mulact.kernels", ROOT / "kernels" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["mulact.kernels"] = module
        spec.loader.exec_module(module)


def _missing(*modules: str) -> str | None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # record the real reason
            return f"{name} not importable ({type(exc).__name__}: {exc})"
    return None


def peak_bandwidth(name: str) -> float | None:
    for key, value in PEAK_BANDWIDTH:
        if key in name:
            return value
    return None


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# ------------------------------------------------------------------------------ timing
def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: str, reps: int, warmup: int = 1) -> float:
    import torch

    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sig(x: float) -> float:
    """Four significant digits (tiny CPU shapes give tiny rates that rounding to places zeroes)."""
    return float(f"{x:.4g}")


def peak_extra_bytes(fn, device: str) -> int | None:
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - base)


# ------------------------------------------------------------------------------ sections
def section_device(report: dict, device: str) -> None:
    import torch

    info = {"device": device, "python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError as exc:
        info["triton"] = f"missing ({exc})"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        info["name"] = name
        info["peak_bandwidth_table_GBps"] = (peak_bandwidth(name) or 0) / 1e9 or None
        x = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
        y = torch.empty_like(x)
        sec = median_seconds(lambda: y.copy_(x), device, reps=10, warmup=2)
        info["copy_GBps"] = round(2 * x.numel() * 4 / sec / 1e9, 1)
        del x, y
        torch.cuda.empty_cache()
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    report["device"] = info


def _cases(device: str, shape, compile_backend: str):
    """``{op: (inputs builder, {provider: fn}, bytes moved, is_loss)}`` for one shape."""
    import torch
    from _partial_label_inputs import stage1_inputs
    from bench_partial_label_loss import composite as pll_composite
    from bench_prototypical_pixel_loss import composite as ppl_composite
    from bench_region_reduce import composite as reduce_composite
    from bench_region_uncertainty_stats import composite as stats_composite

    from mulact import ops

    B, C, H, W, R = shape
    tau = 0.1
    logits, regions, labels = stage1_inputs(device, B, C, H, W, R)
    regions = regions.to(torch.int32)
    plain = logits.detach()
    esize = logits.element_size()
    rbytes = regions.numel() * regions.element_size()

    def compiled(fn):
        return torch.compile(fn, backend=compile_backend, dynamic=False)

    def loss_pair(loss_fn):
        def both():
            value = loss_fn()
            (grad,) = torch.autograd.grad(value, logits)
            return value.detach(), grad
        return both

    def loss_step(loss_fn):
        def step():
            (grad,) = torch.autograd.grad(loss_fn(), logits)
            return grad
        return step

    pll = {
        "mulact": lambda: sum(w * t for w, t in zip((16, 8), ops.partial_label_loss(logits, regions, labels, tau))),
        "reference": lambda: sum(w * t for w, t in zip(
            (16, 8), ops.partial_label_loss_reference(logits, regions, labels, tau))),
        "composite": lambda: sum(w * t for w, t in zip((16, 8), pll_composite(logits, regions, labels, tau))),
    }
    pll_c = compiled(pll_composite)
    pll["compiled"] = lambda: sum(w * t for w, t in zip((16, 8), pll_c(logits, regions, labels, tau)))
    ppl_c = compiled(ppl_composite)
    ppl = {
        "mulact": lambda: ops.prototypical_pixel_loss(logits, regions, labels, tau),
        "reference": lambda: ops.prototypical_pixel_loss_reference(logits, regions, labels, tau),
        "composite": lambda: ppl_composite(logits, regions, labels, tau),
        "compiled": lambda: ppl_c(logits, regions, labels, tau),
    }
    stats_c = compiled(stats_composite)
    stats = {
        "mulact": lambda: ops.region_uncertainty_stats(plain, regions, R, temperature=1.0),
        "reference": lambda: ops.region_uncertainty_stats_reference(plain, regions, R, temperature=1.0),
        "composite": lambda: stats_composite(plain, regions, R),
        "compiled": lambda: stats_c(plain, regions, R),
    }
    red_c = compiled(reduce_composite)
    reduce = {
        "mulact": lambda: ops.region_reduce(plain, regions, R, "mean"),
        "reference": lambda: ops.region_reduce_reference(plain, regions, R, "mean"),
        "composite": lambda: reduce_composite(plain, regions, R, "mean"),
        "compiled": lambda: red_c(plain, regions, R, "mean"),
    }
    n = plain.numel() * esize
    checks = {
        # outputs compared with the reference before anything is timed
        "region_uncertainty_stats": (lambda: tuple(stats["mulact"]()), lambda: tuple(stats["reference"]())),
        "partial_label_loss": (loss_pair(pll["mulact"]), loss_pair(pll["reference"])),
        "prototypical_pixel_loss": (loss_pair(ppl["mulact"]), loss_pair(ppl["reference"])),
        "region_reduce_mean": (lambda: (reduce["mulact"](),), lambda: (reduce["reference"](),)),
    }
    return checks, {
        # logits once, u/count/prob outputs
        "region_uncertainty_stats": ({p: f for p, f in stats.items()}, n + rbytes + B * R * C * 8, False),
        # forward reads the logits, backward reads them again and writes the gradient
        "partial_label_loss": ({p: loss_step(f) for p, f in pll.items()}, 3 * n + 2 * rbytes, True),
        # argmax reads the logits, the backward writes the gradient
        "prototypical_pixel_loss": ({p: loss_step(f) for p, f in ppl.items()}, 2 * n + rbytes, True),
        "region_reduce_mean": ({p: f for p, f in reduce.items()}, n + rbytes + B * R * C * esize, False),
    }


def max_relative_error(fused, reference) -> float:
    """Largest ``|a - b| / max(|b|, 1e-6)`` norm ratio over the outputs of two providers
    (float64 on the host), NaN/Inf counted as an infinite error."""
    import torch

    worst = 0.0
    for a, b in zip(fused(), reference()):
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        if not bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all()):
            return math.inf
        num = float(torch.linalg.vector_norm((a - b).nan_to_num()))
        den = max(float(torch.linalg.vector_norm(b.nan_to_num())), 1e-6)
        worst = max(worst, num / den)
    return _sig(worst)


def section_benchmarks(report: dict, device: str, shapes, budget: Budget, compile_backend: str, reps: int,
                       save, reserve: float = 0.0) -> None:
    """Times every provider; ``reserve`` seconds of the budget are left to the later sections."""
    import torch

    peak = None
    dev = report.get("device", {})
    if dev.get("peak_bandwidth_table_GBps"):
        peak = dev["peak_bandwidth_table_GBps"] * 1e9
    elif dev.get("copy_GBps"):
        peak = dev["copy_GBps"] * 1e9
    rows = report.setdefault("benchmarks", [])
    for shape in shapes:
        checks, cases = _cases(device, shape, compile_backend)
        for op, (providers, moved, is_loss) in cases.items():
            error = None
            if budget.left() >= reserve + 30:
                try:
                    error = max_relative_error(*checks[op])
                except Exception as exc:
                    error = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            for provider, fn in providers.items():
                row = {"op": op, "shape": "x".join(map(str, shape[:4])), "R": shape[4], "provider": provider,
                       "bytes": moved}
                if provider == "mulact":
                    row["rel_err_vs_reference"] = error
                rows.append(row)
                if budget.left() < reserve + 30:
                    row["status"] = "skipped: time budget"
                    continue
                try:
                    start = time.perf_counter()
                    fn()  # compiles the compiled provider; checks the others run
                    _sync(device)
                    if provider == "compiled":
                        row["compile_s"] = round(time.perf_counter() - start, 2)
                    sec = median_seconds(fn, device, reps=reps if provider != "reference" else max(2, reps // 4))
                    row.update(status="ok", ms=_sig(sec * 1e3), GBps=_sig(moved / sec / 1e9))
                    if peak:
                        row["pct_of_peak"] = _sig(100 * moved / sec / peak)
                    if is_loss:
                        row["peak_extra_bytes"] = peak_extra_bytes(fn, device)
                except Exception as exc:
                    row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
                finally:
                    if device == "cuda":
                        torch.cuda.empty_cache()
                save()
        del cases


TEST_FILES = ["test_dispatch.py", "test_status.py", "test_region_reduce.py", "test_region_uncertainty_stats.py",
              "test_partial_label_loss.py", "test_prototypical_pixel_loss.py", "test_region_class_argmax.py",
              "test_prototype_pseudo_labels.py", "test_region_adjacency.py", "test_region_labels_from_mask.py"]


def section_tests(report: dict, device: str, budget: Budget, select: str, files, cap: float,
                  log: Path | None = None) -> None:
    """The CUDA cases of the op tests; the whole pytest output goes to ``log``."""
    why = _missing("pytest")
    if why:
        report["tests"] = {"status": f"skipped: {why}"}
        return
    timeout = max(30, int(min(cap, budget.left() - 10)))
    # every failure, not just the first: a device session is too short to rerun for the next one
    args = ["-q", "-rf", "--tb=short", "-p", "no:cacheprovider", "-k", select] + [str(ROOT / "tests" / f) for f in files]
    code = ("import sys; sys.argv[0] = %r; import runpy; g = runpy.run_path(%r, run_name='gpu_check');"
            "g['_prepare_imports'](); import pytest; sys.exit(pytest.main(%r))") % (__file__, __file__, args)
    env = dict(os.environ)
    if device == "cpu":
        env.setdefault("TRITON_INTERPRET", "1")
    try:
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if log is not None:
            log.write_text(proc.stdout + proc.stderr)
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        tail = lines[-15:]
        report["tests"] = {"status": "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                           "summary": tail[-1] if tail else "", "tail": tail,
                           "failed": [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))][:200]}
    except subprocess.TimeoutExpired:
        report["tests"] = {"status": f"failed: timed out after {timeout} s"}


def section_smoke(report: dict, device: str, iterations: int, tiny: bool) -> None:
    why = _missing("segmentation_models_pytorch")
    if why:
        report["training_smoke"] = {"status": f"skipped: {why}"}
        return
    import torch
    from _partial_label_inputs import partial_labels
    from _shapes import blocky_regions

    from mulact.engine.losses import mulact_loss
    from mulact.model import build_model

    C = 19
    # tiny: batch 2, since the ASPP's image pooling has one value per channel and image and
    # BatchNorm in training needs more than one
    B, H, W, R = (2, 64, 64, 8) if tiny else (4, 128, 256, 128)  # demo preset: batch 4, 128 crops
    model = build_model(C, "resnet18", None, decoder_channels=16 if tiny else 64, seed=0).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, H, W, generator=g).to(device)
    regions = blocky_regions(B, H, W, R, seed=0).to(device)
    labels = partial_labels(B, R, C + 1, labeled=0.5, seed=0).to(device)
    losses, start = [], None
    for k in range(iterations):
        if k == 1:
            _sync(device)
            start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, _ = mulact_loss(model(x), regions, labels, temperature=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    _sync(device)
    per_it = (time.perf_counter() - start) / max(iterations - 1, 1)
    finite = all(math.isfinite(v) for v in losses)
    report["training_smoke"] = {
        "status": "ok" if finite else "failed: non-finite loss",
        "batch": f"{B}x3x{H}x{W}", "iterations": iterations, "bf16": device == "cuda",
        "s_per_iteration": round(per_it, 4), "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
    }


def section_rehearsal(report: dict, device: str, out: Path, images: int, iterations: int, tiny: bool) -> None:
    """Per-step times of the pipeline at Cityscapes shapes (benchmarks/cityscapes_rehearsal.py)."""
    why = _missing("segmentation_models_pytorch", "cv2", "skimage")
    if why:
        report["rehearsal"] = {"status": f"skipped: {why}"}
        return
    import cityscapes_rehearsal
    import cv2

    from mulact.ops._backend import cpp_available

    # SEEDS needs opencv-contrib (ximgproc), which a bare GPU image may lack (its wheel is over
    # the carry limit): the grid keeps the region count (2,048 of 32 px) and so every op's shape.
    method = "seeds" if hasattr(cv2, "ximgproc") else "grid"
    oracle_device = "cpu" if cpp_available() else device
    argv = ["--device", device, "--images", str(images), "--iterations", str(iterations),
            "--superpixels", method, "--oracle-device", oracle_device, "--out", str(out),
            "--note", f"gpu_check; superpixels {method}, oracle on {oracle_device}"]
    if tiny:
        argv += ["--height", "64", "--width", "128", "--crop-size", "48"]
    cityscapes_rehearsal.main(argv)
    tag = "cuda" if device == "cuda" else "cpu"
    res = json.loads((out / f"cityscapes_rehearsal_{tag}.json").read_text())
    report["rehearsal"] = {"status": "ok", "superpixels": method, "oracle_device": oracle_device,
                           "files": [f"cityscapes_rehearsal_{tag}.md", f"cityscapes_rehearsal_{tag}.json"],
                           "stages": {k: {"median_s": round(v["median_s"], 4), "peak_memory_gib": v["peak_memory_gib"],
                                          "runs": v["runs"]} for k, v in res["stages"].items()}}


# ------------------------------------------------------------------------------ output
def render_markdown(report: dict) -> str:
    dev = report.get("device", {})
    lines = [f"# GPU check: {dev.get('name', '?')} ({report['date']})", "",
             f"torch {dev.get('torch')}, triton {dev.get('triton')}, python {dev.get('python')}; "
             f"peak bandwidth (table) {dev.get('peak_bandwidth_table_GBps')} GB/s, device copy "
             f"{dev.get('copy_GBps')} GB/s. Mode: {report['mode']}.", ""]
    rows = report.get("benchmarks", [])
    if rows:
        lines += ["## Benchmarks (median)", "",
                  "| op | shape | R | provider | ms | GB/s | % peak | peak extra MiB | compile s | rel. err vs reference | status |",
                  "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            extra = r.get("peak_extra_bytes")
            err = r.get("rel_err_vs_reference")
            lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
                r["op"], r["shape"], r["R"], r["provider"], r.get("ms", ""), r.get("GBps", ""),
                r.get("pct_of_peak", ""), "" if extra is None else round(extra / 2**20, 1), r.get("compile_s", ""),
                "" if err is None else err, r.get("status", "")))
        lines.append("")
    tests = report.get("tests")
    if tests:
        lines += ["## Tests", "", f"{tests['status']}: {tests.get('summary', '')}", ""]
        lines += [f"- {ln}" for ln in tests.get("failed", [])] + ([""] if tests.get("failed") else [])
    smoke = report.get("training_smoke")
    if smoke:
        lines += ["## Training smoke", "", ", ".join(f"{k}: {v}" for k, v in smoke.items()), ""]
    rehearsal = report.get("rehearsal")
    if rehearsal:
        lines += ["## Rehearsal (per step, Cityscapes shapes)", "", f"{rehearsal['status']}"
                  + (f"; superpixels {rehearsal['superpixels']}, oracle on {rehearsal['oracle_device']}"
                     if "superpixels" in rehearsal else ""), ""]
        for k, v in rehearsal.get("stages", {}).items():
            lines.append(f"- {k}: {v['median_s']} s (median of {v['runs']}), peak {v['peak_memory_gib']} GiB")
        lines.append("")
    for name, err in report.get("errors", {}).items():
        lines += [f"## {name}: error", "", "```", err.strip(), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (exercises the script)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="directory for the .md and .json")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of `compiled`")
    parser.add_argument("--tests-k", default="triton or cuda", help="pytest -k selection of the CUDA tests")
    parser.add_argument("--tests", nargs="*", default=TEST_FILES, help="test files (in tests/) of section 3")
    parser.add_argument("--tests-timeout", type=float, default=240.0, help="seconds for section 3 at most")
    parser.add_argument("--skip", nargs="*", default=[], choices=["benchmarks", "tests", "smoke", "rehearsal"])
    parser.add_argument("--reserve", type=float, default=150.0,
                        help="seconds of the budget the benchmarks leave to the tests, smoke and rehearsal")
    parser.add_argument("--rehearsal-images", type=int, default=3)
    parser.add_argument("--rehearsal-iterations", type=int, default=8)
    args = parser.parse_args(argv)
    _prepare_imports()
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --cpu to exercise the script on tiny shapes")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    budget = Budget(args.budget)
    report = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "mode": "cpu (tiny shapes)" if args.cpu else "cuda", "errors": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = None

    def save():
        nonlocal stem
        if stem is None:
            name = report.get("device", {}).get("name") or device
            safe = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or device
            stem = f"{safe}_{report['date'][:10]}"
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
        (args.out / f"{stem}.md").write_text(render_markdown(report))

    sections = [("device", lambda: section_device(report, device))]
    if "benchmarks" not in args.skip:
        sections.append(("benchmarks", lambda: section_benchmarks(
            report, device, CPU_SHAPES if args.cpu else GPU_SHAPES, budget, args.compile_backend,
            reps=2 if args.cpu else 10, save=save, reserve=0.0 if args.cpu else args.reserve)))
    if "smoke" not in args.skip:
        sections.append(("smoke", lambda: section_smoke(report, device, iterations=2 if args.cpu else 10,
                                                        tiny=args.cpu)))
    if "rehearsal" not in args.skip:
        sections.append(("rehearsal", lambda: section_rehearsal(
            report, device, args.out, 1 if args.cpu else args.rehearsal_images,
            1 if args.cpu else args.rehearsal_iterations, tiny=args.cpu)))
    if "tests" not in args.skip:  # last: it takes what the budget has left, up to --tests-timeout
        sections.append(("tests", lambda: section_tests(report, device, budget, args.tests_k, args.tests, args.tests_timeout,
                                                        log=args.out / "tests_log.txt")))
    for name, run in sections:
        try:
            if name != "device" and budget.left() < 20:
                report["errors"][name] = "skipped: time budget"
            else:
                run()
        except Exception:
            report["errors"][name] = traceback.format_exc()
        save()
    report["files"] = [str(args.out / f"{stem}.{ext}") for ext in ("md", "json")]
    save()
    print(render_markdown(report))
    return report


if __name__ == "__main__":
    main()
