"""A tiny, fast `mulact-train` configuration shared by the CLI / resume tests."""
import os
import subprocess
import sys

TINY = [
    "--demo-train-images", "6", "--demo-val-images", "2", "--demo-height", "64", "--demo-width", "128",
    "--region-size", "16", "--rounds", "3", "--budget", "25", "--iterations", "8", "--checkpoint-interval", "2",
    "--batch-size", "2", "--crop-size", "48", "--encoder", "resnet18", "--decoder-channels", "16",
    "--eval-batch-size", "2", "--acquisition-batch-size", "3", "--acquisition", "pixbal",
]


def env_for(cache_dir):
    env = dict(os.environ)
    env["MULACT_CACHE"] = str(cache_dir)
    env["OMP_NUM_THREADS"] = "1"  # identical float reductions in every process
    env.pop("TRITON_INTERPRET", None)
    return env


def cli(args, cache_dir, **kw):
    return subprocess.run([sys.executable, "-m", "mulact.cli", *args], env=env_for(cache_dir),
                          capture_output=True, text=True, timeout=600, **kw)


def popen(args, cache_dir):
    return subprocess.Popen([sys.executable, "-m", "mulact.cli", *args], env=env_for(cache_dir),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
