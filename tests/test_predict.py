"""`mulact-predict` on a tiny finished run: images from files, directories and globs, --round,
clear errors, the smp-only model file (the README example, executed) and the label export."""
import glob
import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from _tiny_run import TINY, cli

from mulact.al.pool import RegionPool
from mulact.data.transforms import normalize, to_float_image
from mulact.model import build_model
from mulact.predict import RunFiles, main
from mulact.runstore import Manifest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two rounds with stage 2 (so pseudo labels exist), and the demo images it used."""
    base = tmp_path_factory.mktemp("predict")
    run = base / "run"
    r = cli([*TINY, "--rounds", "2", "--stage2", "--run-dir", str(run)], base / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    images = sorted(glob.glob(str(base / "cache" / "demo" / "*" / "leftImg8bit" / "val" / "*" / "*.png")))
    assert len(images) == 2
    return {"run": run, "cache": base / "cache", "val": images, "val_dir": os.path.dirname(images[0])}


@pytest.fixture
def env(tiny_run, monkeypatch):
    monkeypatch.setenv("MULACT_CACHE", str(tiny_run["cache"]))  # where the run's demo data set lives
    return tiny_run


def reference_prediction(run_dir, t, path):
    """Class ids of the image at ``path`` from round ``t``'s stage-2 weights, loaded without mulact.predict."""
    cfg = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    names = json.load(open(os.path.join(run_dir, "metrics.json")))["class_names"]
    model = build_model(len(names), cfg["encoder"], None, cfg["decoder_channels"])
    state = torch.load(os.path.join(run_dir, f"round_{t:02d}", "stage2.pt"), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        logits = model.eval()(normalize(to_float_image(rgb))[None])
    return logits[0, :len(names)].argmax(0).numpy(), rgb, model


def read_png(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def test_predict_files_directories_and_globs(env, tmp_path, capsys):
    run, (a, b) = env["run"], env["val"]
    out = tmp_path / "out"
    # one file, the directory holding both, and a recursive glob matching both: each image once
    pattern = os.path.join(env["cache"], "demo", "**", "val", "**", "*_leftImg8bit.png")
    assert main([str(run), a, env["val_dir"], pattern, "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert "segmented 2 images with round 2's model" in capsys.readouterr().out
    for path in (a, b):
        name = os.path.splitext(os.path.basename(path))[0]
        pred = read_png(out / f"{name}.png")
        ref, rgb, _ = reference_prediction(run, 2, path)
        assert pred.dtype == np.uint8 and pred.shape == rgb.shape[:2]
        np.testing.assert_array_equal(pred, ref)
        ov = cv2.imread(str(out / f"{name}_overlay.png"))
        assert ov.shape[1] == rgb.shape[1] and ov.shape[0] > rgb.shape[0]  # image + legend below
        assert not np.array_equal(ov[:rgb.shape[0]], cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_directory_input_keeps_subfolders(env, tmp_path):
    src = tmp_path / "photos"
    (src / "street").mkdir(parents=True)
    shutil.copy(env["val"][0], src / "street" / "x.png")
    shutil.copy(env["val"][1], src / "y.png")
    (src / "notes.txt").write_text("not an image")
    assert main([str(env["run"]), str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert sorted(os.path.relpath(p, tmp_path / "o") for p in glob.glob(str(tmp_path / "o" / "**" / "*.png"),
                                                                        recursive=True)) == \
        ["street/x.png", "street/x_overlay.png", "y.png", "y_overlay.png"]


def test_round_selects_the_model(env, tmp_path, capsys):
    out = tmp_path / "r1"
    assert main([str(env["run"]), env["val"][0], "--out", str(out), "--round", "1", "--no-progress"]) == 0
    assert "round 1's model" in capsys.readouterr().out
    name = os.path.splitext(os.path.basename(env["val"][0]))[0]
    ref1, _, _ = reference_prediction(env["run"], 1, env["val"][0])
    ref2, _, _ = reference_prediction(env["run"], 2, env["val"][0])
    assert not np.array_equal(ref1, ref2)  # else this test could not tell the rounds apart
    np.testing.assert_array_equal(read_png(out / f"{name}.png"), ref1)


@pytest.mark.parametrize("args, message", [
    (["{img}", "--out", "{tmp}/o", "--round", "3"], "--round 3: not a finished round of"),
    (["{tmp}/nowhere.png", "--out", "{tmp}/o"], "IMAGES: '{tmp}/nowhere.png' does not exist"),
    (["{tmp}/*.jpeg", "--out", "{tmp}/o"], "IMAGES: no image file matches '{tmp}/*.jpeg'"),
    (["{tmp}", "--out", "{tmp}/o"], "holds no image files"),
    (["{img}"], "--out: required"),
    ([], "IMAGES: give at least one image"),
    (["--export-labels", "{tmp}/l", "--export-model", "{tmp}/m.pt"], "give one of them per call"),
    (["{img}", "--out", "{tmp}/o", "--device", "tpu"], "--device tpu: expected auto, cpu, cuda"),
])
def test_bad_arguments_are_named(env, tmp_path, capsys, args, message):
    fill = {"img": env["val"][0], "tmp": str(tmp_path)}
    assert main([str(env["run"]), *(a.format(**fill) for a in args), "--no-progress"]) == 2
    assert message.format(**fill) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_same_output_name_twice_is_refused(env, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(env["val"][0], other / os.path.basename(env["val"][0]))
    assert main([str(env["run"]), env["val"][0], str(other / os.path.basename(env["val"][0])),
                 "--out", str(tmp_path / "o")]) == 2
    assert "would both be written as" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unreadable_image_is_named_and_the_others_written(env, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(open(env["val"][0], "rb").read()[:200])  # truncated PNG
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "o"
    assert main([str(env["run"]), str(bad), env["val"][0], str(empty), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 of 3 images could not be read" in err
    assert f"{bad}: is not an image" in err and f"{empty}: is empty" in err
    assert (out / (os.path.splitext(os.path.basename(env["val"][0]))[0] + ".png")).is_file()
    assert not (out / "broken.png").exists()


def test_run_without_a_finished_model(env, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(env["run"] / "config.yaml", fresh / "config.yaml")
    assert main([str(fresh), env["val"][0], "--out", str(tmp_path / "o")]) == 2
    assert "has no finished model yet" in capsys.readouterr().err
    assert main([str(tmp_path), env["val"][0], "--out", str(tmp_path / "o")]) == 2
    assert "is not a mulact run directory (no config.yaml)" in capsys.readouterr().err


def test_damaged_checkpoint_is_named(env, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(env["run"], copy, ignore=shutil.ignore_patterns(".lock"))
    weights = copy / "round_02" / "stage2.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert main([str(copy), env["val"][0], "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "SHA-256 mismatch" in err
    assert not (tmp_path / "o").exists()


def test_smp_model_file_readme_example(env):
    """The README's five lines, run as written (path and input filled in), give mulact's scores."""
    run = env["run"]
    store = Manifest(run, readonly=True)
    store.verify(run / "model_smp.pt")  # written by the run and recorded in its manifest
    text = open(README).read()
    code = re.search(r"<!-- smp-example[^>]*-->\n```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) == 5
    code = code.replace("runs/mine/model_smp.pt", str(run / "model_smp.pt"))
    m = torch.load(run / "model_smp.pt", weights_only=True)
    assert m["class_names"] == json.load(open(run / "metrics.json"))["class_names"]
    assert (m["round"], m["stage"], m["undefined_class"]) == (2, "stage2", m["num_classes"])
    for path in env["val"]:
        ref, rgb, model = reference_prediction(run, 2, path)
        x = normalize(to_float_image(rgb))[None]
        assert x.shape[-2] % 16 == 0 and x.shape[-1] % 16 == 0
        ns = {"x": x}
        with torch.no_grad():
            exec(code, ns)
            logits = model(x)
        torch.testing.assert_close(F.interpolate(ns["cos"], scale_factor=4, mode="bilinear"), logits,
                                   atol=1e-5, rtol=0)
        np.testing.assert_array_equal(ns["pred"][0].numpy(), ref)


def test_export_model_command(env, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main([str(env["run"]), "--export-model", str(out), "--round", "1"]) == 0
    assert "round 1 (stage2)" in capsys.readouterr().out
    m = torch.load(out, weights_only=True)
    assert m["round"] == 1
    w = m["state_dict"]["segmentation_head.0.weight"]
    torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(w.shape[0]))


def _check_export(run_dir, out, rounds, pseudo_round):
    """Every exported pixel is a single-class answer, else the pseudo label, else void."""
    run = RunFiles(run_dir)
    C = len(run.class_names)
    pool = RegionPool.load(os.path.join(run_dir, "pool.npz")).until(rounds)
    summary = json.load(open(out / "labels.json"))
    assert summary["pseudo_labels_round"] == pseudo_round and summary["rounds"] == rounds
    assert [r["image"] for r in summary["images"]] == [int(i) for i in pool.labeled_images()]
    classes = yaml.safe_load(open(out / "classes.yaml"))
    assert [c["name"] for c in classes["classes"]] == run.class_names and classes["ignore_index"] == 255
    from mulact.al.data import build_split

    train = build_split(run.cfg, "train")
    pseudo_images = set() if pseudo_round is None else {int(i) for i in pool.until(pseudo_round).labeled_images()}
    seen = {"single": 0, "pseudo": 0, "multi": 0}
    for rec in summary["images"]:
        i = rec["image"]
        mask = read_png(out / rec["mask"]).astype(np.int64)
        regions = train.load_regions(i)
        labels = pool.region_labels(i).numpy()
        expect = np.full(mask.shape, 255)
        if i in pseudo_images:
            pseudo = np.load(run_dir / f"round_{pseudo_round:02d}" / "pseudo" / f"{i:06d}.npy").astype(np.int64)
            expect = np.where(pseudo < C, pseudo, 255)
        for r in np.flatnonzero(labels.any(1)):
            if labels[r].sum() == 1 and not labels[r, C]:
                expect[regions == r] = int(np.flatnonzero(labels[r])[0])
                seen["single"] += 1
            else:
                seen["multi"] += 1
        np.testing.assert_array_equal(mask, expect)
        assert rec["region_pixels"] + rec["pseudo_pixels"] + rec["void_pixels"] == mask.size
        seen["pseudo"] += rec["pseudo_pixels"]
    return seen


def test_export_labels_with_pseudo_labels(env, tmp_path, capsys):
    out = tmp_path / "labels"
    assert main([str(env["run"]), "--export-labels", str(out), "--no-progress"]) == 0
    assert "pseudo labels of round 2" in capsys.readouterr().out
    seen = _check_export(env["run"], out, 2, 2)
    assert seen["single"] > 0 and seen["multi"] > 0 and seen["pseudo"] > 0  # every source is exercised


def test_export_labels_of_round_1_without_pseudo_labels(env, tmp_path, monkeypatch):
    from mulact.export import export_labels

    run = RunFiles(env["run"])
    run.cfg.stage2 = False  # as a stage-1-only run: region answers and void, nothing else
    out = tmp_path / "labels"
    summary = export_labels(run, str(out), round_index=1, progress=False)
    assert all(r["pseudo_pixels"] == 0 for r in summary["images"])
    seen = _check_export(env["run"], out, 1, None)
    assert seen["single"] > 0 and seen["multi"] > 0
    with pytest.raises(ValueError, match="--round 5: the run has labels of rounds 1..2"):
        export_labels(run, str(tmp_path / "x"), round_index=5, progress=False)


def test_folder_dataset_run_predicts_in_its_own_colours(tmp_path, monkeypatch, capsys):
    """A run on a folder dataset (own 5 classes, mixed sizes, png and jpg): predictions keep each
    image's size, overlays and exports use the colours of its classes.yaml."""
    from _folder_data import CLASSES, make_folder_dataset

    root = make_folder_dataset(tmp_path / "data")
    run = tmp_path / "run"
    r = cli(["--preset", "demo", "--dataset", "folder", "--data-root", str(root), "--region-size", "16",
             "--rounds", "1", "--budget", "25", "--iterations", "4", "--batch-size", "2", "--crop-size", "48",
             "--decoder-channels", "16", "--eval-batch-size", "2", "--acquisition-batch-size", "2", "--no-stage2",
             "--run-dir", str(run)], tmp_path / "cache")
    assert r.returncode == 0, r.stderr[-3000:]
    monkeypatch.setenv("MULACT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pred"
    assert main([str(run), str(root / "images" / "val"), "--out", str(out), "--no-progress"]) == 0
    colors = np.array([c for _, c in CLASSES], np.float64)
    for path in sorted((root / "images" / "val").iterdir()):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        pred = read_png(out / f"{path.stem}.png")
        assert pred.shape == rgb.shape[:2] and pred.max() < len(CLASSES)
        ov = cv2.cvtColor(cv2.imread(str(out / f"{path.stem}_overlay.png")), cv2.COLOR_BGR2RGB)[:rgb.shape[0]]
        inner = np.zeros(pred.shape, bool)  # pixels whose 4 neighbours share their class: no border drawn
        inner[1:-1, 1:-1] = ((pred[1:-1, 1:-1] == pred[:-2, 1:-1]) & (pred[1:-1, 1:-1] == pred[2:, 1:-1])
                             & (pred[1:-1, 1:-1] == pred[1:-1, :-2]) & (pred[1:-1, 1:-1] == pred[1:-1, 2:]))
        assert inner.any()
        expect = 0.5 * rgb[inner] + 0.5 * colors[pred[inner]]
        assert np.abs(ov[inner].astype(np.float64) - expect).max() <= 1.0
    m = torch.load(run / "model_smp.pt", weights_only=True)
    assert m["class_names"] == [n for n, _ in CLASSES] and m["colors"] == [list(c) for _, c in CLASSES]
    assert main([str(run), "--export-labels", str(tmp_path / "labels"), "--no-progress"]) == 0
    exported = yaml.safe_load((tmp_path / "labels" / "classes.yaml").read_text())
    assert [(c["name"], tuple(c["color"])) for c in exported["classes"]] == CLASSES
    assert "wrote the masks of" in capsys.readouterr().out


def test_rerun_rewrites_a_damaged_or_stale_smp_model(env, tmp_path):
    """A finished run's rerun leaves model_smp.pt holding the last round's model: a damaged file,
    one of an earlier round (a stop between the metrics and the model file) and none (a run from
    before the file existed) are written again and recorded."""
    from mulact.runstore import atomic_write

    copy = tmp_path / "run"
    shutil.copytree(env["run"], copy, ignore=shutil.ignore_patterns(".lock"))
    smp = copy / "model_smp.pt"
    assert main([str(copy), "--export-model", str(tmp_path / "r1.pt"), "--round", "1"]) == 0
    round1 = (tmp_path / "r1.pt").read_bytes()
    want = torch.load(env["run"] / "model_smp.pt", weights_only=True)["state_dict"]["segmentation_head.0.weight"]

    def stale():
        with Manifest(copy):
            atomic_write(smp, round1)  # recorded: it verifies, but holds round 1

    def gone():
        with Manifest(copy) as store:
            store.forget(smp)

    for damage, warned in ((lambda: smp.write_bytes(smp.read_bytes()[:1000]), True), (stale, False),
                           (gone, False)):
        damage()
        r = cli([*TINY, "--rounds", "2", "--stage2", "--run-dir", str(copy)], env["cache"])
        assert r.returncode == 0, r.stderr[-3000:]
        assert (f"{smp}: is 1000 bytes" in r.stdout) == warned
        Manifest(copy, readonly=True).verify(smp)
        m = torch.load(smp, weights_only=True)
        assert (m["round"], m["stage"]) == (2, "stage2")
        assert torch.equal(m["state_dict"]["segmentation_head.0.weight"], want)
