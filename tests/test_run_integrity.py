"""Damaged, foreign and missing files of a run: recomputed with a warning naming the file when
derivable (and the results equal an undamaged run), a clear error naming the file otherwise.

One tiny 2-round run is made once (in this process, one thread, so reruns reproduce it bit for
bit); every case copies it, damages one file, reruns the same command and compares.
"""
import contextlib
import io
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from _tiny_run import TINY

from mulact import cli
from mulact.al.pool import RegionPool
from mulact.data.cache import default_superpixel_dir

ARGS = [*TINY, "--rounds", "2", "--iterations", "4", "--encoder", "mobilenet_v2"]


def _arg(name):
    return ARGS[ARGS.index(name) + 1]


@contextlib.contextmanager
def _env(cache):
    old_cache, old_threads = os.environ.get("MULACT_CACHE"), torch.get_num_threads()
    os.environ["MULACT_CACHE"] = str(cache)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        if old_cache is None:
            os.environ.pop("MULACT_CACHE", None)
        else:
            os.environ["MULACT_CACHE"] = old_cache


def train(run, cache, *extra):
    """``mulact-train`` in this process: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # cli's basicConfig binds the stderr of its first call only
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        with _env(cache), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(["--run-dir", str(run), *ARGS, *extra])
    finally:
        logging.getLogger().removeHandler(handler)
    return rc, out.getvalue(), err.getvalue()


def results(run):
    sel = [json.loads((run / "selections" / f"round_{t:02d}.json").read_text()) for t in (1, 2)]
    metrics = json.loads((run / "metrics.json").read_text())["rounds"]
    with np.load(run / "pool.npz") as z:
        pool = {k: z[k] for k in ("labels", "cost", "round", "selection_1", "selection_2")}
    return sel, [(m["round"], m["miou"], m["stage1_miou"], m.get("pseudo_label_accuracy")) for m in metrics], pool


def same_results(a, b):
    assert a[0] == b[0], "selection records differ"
    assert a[1] == b[1], "metrics differ"
    for k in a[2]:
        assert np.array_equal(a[2][k], b[2][k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("ref")
    rc, out, err = train(base / "run", base / "cache")
    assert rc == 0, err[-3000:]
    return base


@pytest.fixture
def copy(reference, tmp_path):
    shutil.copytree(reference / "run", tmp_path / "run")
    shutil.copytree(reference / "cache", tmp_path / "cache")
    return tmp_path / "run", tmp_path / "cache"


def truncate(p):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def overwrite_middle(p):
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8] = bytes((b ^ 0x5A) for b in data[mid:mid + 8])
    p.write_bytes(bytes(data))


def delete(p):
    p.unlink()


DAMAGES = {"truncate": truncate, "overwrite": overwrite_middle, "delete": delete}


def _other(path, run, cache):
    """A valid file of the same kind belonging to another round / image."""
    if path.name == "pool.npz":
        other = run.parent / "other_pool.npz"
        RegionPool.load(str(path)).until(1).save(str(other))
        return other
    if path.name == "metrics.json":
        doc = json.loads(path.read_text())
        doc["rounds"] = doc["rounds"][:1]
        other = run.parent / "other_metrics.json"
        other.write_text(json.dumps(doc))
        return other
    if path.name == "oracle.npz":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["bits"] = arrays["bits"][::-1].copy()
        other = run.parent / "other_oracle.npz"
        np.savez(other, **arrays)
        return other
    if path.name == "config.yaml":
        other = run.parent / "other_config.yaml"
        other.write_text(path.read_text().replace("seed: 0", "seed: 1"))
        return other
    if path.suffix == ".pt":  # the same file of another round
        other = [p for p in run.glob(f"round_*/{path.name}") if p != path]
        return other[0]
    candidates = sorted(p for p in path.parent.parent.rglob(f"*{path.suffix}")
                        if p != path and p.name[0] != "." and p.parent.name == path.parent.name)
    candidates = [p for p in candidates if p.read_bytes() != path.read_bytes()]
    return candidates[0]


def replace(path, run, cache):
    shutil.copyfile(_other(path, run, cache), path)


# files whose damage is repaired by recomputing them; the path is relative to the run dir
DERIVABLE = [
    "oracle.npz",
    "selections/round_01.json",
    "metrics.json",
    "round_01/stage1.pt",
    "round_02/stage2.pt",
    "round_01/pseudo/{pseudo}",
    "config.yaml",
]


def _resolve(rel, run):
    if "{pseudo}" in rel:
        maps = sorted((run / "round_01" / "pseudo").glob("0*.npy"))
        return maps[0]
    return run / rel


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "replace", "delete"])
@pytest.mark.parametrize("rel", DERIVABLE)
def test_derivable_file_is_recomputed(reference, copy, rel, damage):
    run, cache = copy
    path = _resolve(rel, run)
    before = path.read_bytes()
    if damage == "replace":
        replace(path, run, cache)
    else:
        DAMAGES[damage](path)
    rc, out, err = train(run, cache)
    assert rc == 0, err[-3000:]
    assert f"warning: {path}" in out, out[-3000:]
    if path.suffix == ".pt":  # the same weights (the summary holds the training time)
        a = torch.load(io.BytesIO(before), weights_only=False)["model"]
        b = torch.load(path, weights_only=False)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    elif path.name == "config.yaml":  # rewritten from the command, which names this copy's run_dir
        a, b = yaml.safe_load(before), yaml.safe_load(path.read_text())
        assert b.pop("run_dir") == str(run) and a.pop("run_dir") != str(run) and a == b
    else:
        assert path.read_bytes() == before  # recomputed to the very same bytes
    same_results(results(reference / "run"), results(run))
    # and a second rerun finds nothing to repair
    rc, out, err = train(run, cache)
    assert rc == 0 and "warning:" not in out, out[-3000:]


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "replace", "delete"])
def test_damaged_pool_stops_with_a_clear_error(copy, damage):
    run, cache = copy
    path = run / "pool.npz"
    if damage == "replace":
        replace(path, run, cache)
    else:
        DAMAGES[damage](path)
    rc, out, err = train(run, cache)
    assert rc == 1
    assert f"error: {path}:" in err and "cannot be recomputed" in err and "Restore pool.npz" in err, err
    assert "Traceback" not in err


def test_config_damaged_and_different_options_is_refused(copy):
    run, cache = copy
    truncate(run / "config.yaml")
    rc, out, err = train(run, cache, "--seed", "5")
    assert rc == 1 and f"{run / 'config.yaml'}" in err and "differs from the one recorded" in err, err


def test_damaged_manifest_is_an_error_naming_it(copy):
    run, cache = copy
    overwrite_middle(run / "manifest.json")
    rc, out, err = train(run, cache)
    assert rc == 1 and f"{run / 'manifest.json'}" in err and "delete it" in err, err


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "replace", "delete"])
def test_superpixel_map_is_recomputed(reference, copy, damage):
    run, cache = copy
    (run / "metrics.json").unlink()
    assert train(run, cache)[0] == 0  # evaluates, making the val maps of this copy of the demo data
    with _env(cache):
        sp_dir = default_superpixel_dir(cache / "demo" / "0-6x2-64x128", "val", "seeds", 16)
    # the val maps are read again when the rounds are evaluated again
    (run / "metrics.json").unlink()
    path = sorted(sp_dir.rglob("*.png"))[0]
    before = path.read_bytes()
    if damage == "replace":
        replace(path, run, cache)
    else:
        DAMAGES[damage](path)
    rc, out, err = train(run, cache)
    assert rc == 0, err[-3000:]
    if damage != "delete":  # a missing map is computed as on a first run
        assert f"{path}" in err and "recomputing it" in err, err[-3000:]
    assert path.read_bytes() == before
    same_results(results(reference / "run"), results(run))


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "replace", "delete"])
def test_demo_image_is_regenerated(reference, copy, damage):
    run, cache = copy
    imgs = sorted((cache / "demo").rglob("leftImg8bit/train/**/*.png"))
    path = imgs[1]
    before = path.read_bytes()
    if damage == "replace":
        replace(path, run, cache)
    else:
        DAMAGES[damage](path)
    rc, out, err = train(run, cache)
    assert rc == 0, err[-3000:]
    assert f"{path}" in err and "regenerating it" in err, err[-3000:]
    assert path.read_bytes() == before
    same_results(results(reference / "run"), results(run))


def test_truncated_selection_of_finished_run_is_repaired(reference, copy):
    run, cache = copy
    path = run / "selections" / "round_02.json"
    before = path.read_bytes()
    truncate(path)
    rc, out, err = train(run, cache)
    assert rc == 0 and path.read_bytes() == before


def test_damage_between_steps_of_a_run(reference, copy):
    """A run stopped after round 1 (round 2 selected, not trained) with round 1's final
    weights and the pool's selection record damaged: round 2 redoes exactly the reference."""
    run, cache = copy
    for f in ("round_02",):
        shutil.rmtree(run / f)
    doc = json.loads((run / "metrics.json").read_text())
    doc["rounds"] = doc["rounds"][:1]
    from mulact.runstore import Manifest

    with Manifest(run) as m:  # the state a kill after round 1's metrics leaves behind
        for rel in list(m.entries):
            if rel.startswith("round_02/"):
                m.forget(run / rel)
        from mulact.runstore import write_json

        write_json(str(run / "metrics.json"), doc)
    overwrite_middle(run / "round_01" / "stage2.pt")
    truncate(run / "selections" / "round_02.json")
    rc, out, err = train(run, cache)
    assert rc == 0, err[-3000:]
    assert f"warning: {run / 'round_01' / 'stage2.pt'}" in out
    assert f"warning: {run / 'selections' / 'round_02.json'}" in out
    same_results(results(reference / "run"), results(run))


def test_leftover_temp_files_are_removed(copy):
    run, cache = copy
    junk = [run / "round_01" / "pseudo" / ".tmp-abc-000001.npy.tmp", run / ".tmp-x-pool.npz.tmp"]
    for j in junk:
        j.write_bytes(b"partial")
    rc, out, err = train(run, cache)
    assert rc == 0 and not any(j.exists() for j in junk)
