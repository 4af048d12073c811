"""A tiny `mulact-train --oracle human` run directory, shared by the labeling tests."""
import os
import shutil

from _tiny_run import TINY, cli

# 2 rounds, and a budget that plans 20 queries in round 1 (30 clicks / prior 1.5 classes each).
HUMAN = [*TINY, "--oracle", "human", "--rounds", "2", "--budget", "30", "--expected-classes-prior", "1.5"]


def break_train_labels(cache_dir):
    """Generate the tiny demo set in ``cache_dir`` and make every *train* label unreadable, so
    any read of train ground truth fails loudly (the human oracle must never need it)."""
    from mulact.data.demo import ensure_demo_dataset

    old = os.environ.get("MULACT_CACHE")
    os.environ["MULACT_CACHE"] = str(cache_dir)
    try:
        root = ensure_demo_dataset(num_train=6, num_val=2, height=64, width=128, progress=False)
    finally:
        if old is None:
            os.environ.pop("MULACT_CACHE")
        else:
            os.environ["MULACT_CACHE"] = old
    broken = 0
    for dirpath, _, files in os.walk(root / "gtFine" / "train"):
        for f in files:
            with open(os.path.join(dirpath, f), "wb") as fh:
                fh.write(b"not a png")
            broken += 1
    assert broken == 6
    return root


def start_human_run(run_dir, cache_dir, *extra):
    return cli(["--run-dir", str(run_dir), *HUMAN, *extra], cache_dir)


def template_human_run(cache):
    """A human-mode run in ``cache`` stopped after writing round 1's 20 queries (train labels
    unreadable); returns ``(run_dir, cache)``."""
    break_train_labels(cache)
    run = cache / "run"
    r = start_human_run(run, cache)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "wrote 20 queries" in r.stderr and "mulact-label" in r.stderr, r.stderr
    return run, cache


def copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst
