"""mulact-train's configuration: None from every source, help text, --print-config, validation."""
import dataclasses
import re

import pytest
import yaml

from mulact.cli import main
from mulact.config import PRESETS, TrainConfig, convert, resolve_config, to_yaml


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def printed_config(argv, capsys) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


# -- None ---------------------------------------------------------------------------------------
def test_null_from_a_flag_beats_the_preset(tmp_path, capsys):
    base = ["--preset", "cityscapes", "--data-root", str(tmp_path)]
    assert printed_config(base, capsys)["encoder_weights"] == "imagenet"
    for spelling in ("null", "None", "none"):
        assert printed_config([*base, "--encoder-weights", spelling], capsys)["encoder_weights"] is None
    # --dataset implies the preset the same way
    cfg = printed_config(["--dataset", "cityscapes", "--data-root", str(tmp_path), "--encoder-weights", "null"], capsys)
    assert cfg["encoder_weights"] is None and cfg["budget"] == PRESETS["cityscapes"]["budget"]


def test_null_from_a_file_and_from_the_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(f"dataset: cityscapes\ndata_root: {tmp_path}\nencoder_weights: null\nmax_val_images: ~\n")
    cfg = resolve_config(None, str(f), {})
    assert cfg.encoder_weights is None and cfg.max_val_images is None and cfg.budget == 100_000
    assert resolve_config("demo").encoder_weights is None
    # a non-null value from a flag overrides a null from the file and the preset
    assert resolve_config("demo", str(f), {"encoder_weights": "imagenet", "encoder": "resnet18"}).encoder_weights == "imagenet"


def test_null_is_refused_where_an_option_needs_a_value():
    with pytest.raises(ValueError, match=r"--rounds null: expected an integer$"):
        resolve_config(None, None, {"rounds": "null"})
    with pytest.raises(ValueError, match="--rounds null"):
        resolve_config(None, None, {"rounds": None})
    assert convert("name", "none") == "none"  # a run may be called 'none'


# -- help and --print-config ------------------------------------------------------------------
def _help_value(out: str, option: str) -> str:
    """The trailing ``[value]`` of ``option``'s help entry."""
    text = " ".join(out.split("experiment options")[1].split())
    m = re.search(re.escape(option) + r" (\S+ .*?)(?= --[a-z]|$)", text)
    assert m, option
    return re.findall(r"\[([^\]]*)\]", m.group(1))[-1]


def test_help_shows_the_chosen_presets_values(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "default: None" not in out and "(default:" not in out.split("experiment options")[1]
    assert "from preset demo" in out
    assert _help_value(out, "--encoder") == PRESETS["demo"]["encoder"]
    assert _help_value(out, "--encoder-weights") == "null"
    assert _help_value(out, "--budget") == str(PRESETS["demo"]["budget"])
    code, out, _ = run_main(["--preset", "cityscapes", "--help"], capsys)
    assert "from preset cityscapes" in out
    assert _help_value(out, "--encoder") == "resnet50" and _help_value(out, "--encoder-weights") == "imagenet"
    assert _help_value(out, "--budget") == "100000" and _help_value(out, "--run-dir") == "null"
    code, out, _ = run_main(["--dataset", "voc", "--help"], capsys)
    assert _help_value(out, "--nu") == "12.0"


def test_help_includes_the_config_file(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("budget: 777\n")
    code, out, _ = run_main(["--config", str(f), "--help"], capsys)
    assert code == 0 and f"preset demo + {f}" in " ".join(out.split())
    assert _help_value(out, "--budget") == "777"


def test_print_config_round_trips_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "voc", "--data-root", str(tmp_path), "--rounds", "2", "--no-hflip", "--nu", "3"]
    assert main([*argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    saved = tmp_path / "resolved.yaml"
    saved.write_text(text)
    want = resolve_config("voc", None, {"data_root": str(tmp_path), "rounds": 2, "hflip": False, "nu": 3})
    assert resolve_config(None, str(saved), {}) == want
    assert list(yaml.safe_load(text)) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert to_yaml(want) == text


# -- validation: one line naming option, value and what is allowed, before any work --------------
BAD = [
    (["--temperature", "nan"], "--temperature nan: expected a finite number"),
    (["--nu", "-1"], "--nu -1.0: expected a value >= 0"),
    (["--checkpoint-interval", "0"], "--checkpoint-interval 0: expected a value >= 1"),
    (["--max-val-images", "0"], "--max-val-images 0: expected a value >= 1"),
    (["--max-train-images", "0"], "--max-train-images 0: expected a value >= 1"),
    (["--stage2-iterations", "0"], "--stage2-iterations 0: expected a value >= 1"),
    (["--lr", "0"], "--lr 0.0: expected a value > 0"),
    (["--lr=-1e-3"], "--lr -0.001: expected a value > 0"),
    (["--lr", "inf"], "--lr inf: expected a finite number"),
    (["--lr-stage2", "nan"], "--lr-stage2 nan: expected a finite number"),
    (["--encoder", "resnet5O"], "--encoder resnet5O: not an smp encoder; did you mean resnet50"),
    (["--encoder", "tu-no_such_model"], "--encoder tu-no_such_model: 'no_such_model' is not a timm model"),
    (["--encoder-weights", "/no/such/enc.pt"], "--encoder-weights /no/such/enc.pt: no such file"),
    (["--rounds", "three"], "--rounds three: expected an integer"),
    (["--rounds", "2.5"], "--rounds 2.5: expected an integer"),
    (["--batch-size", "1"], "--batch-size 1: expected a value >= 2"),
    (["--acquisition", "coreset"], "--acquisition coreset: expected one of random, bvsb"),
    (["--superpixel-method", "felzenszwalb"], "--superpixel-method felzenszwalb: expected one of seeds, slic, grid"),
    (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:<index>"),
    (["--scale-min", "3"], "--scale-min 3.0: expected <= --scale-max 1.5"),
    (["--loss", "dominant"], "--loss dominant: needs --labeling dominant"),
    (["--name", " "], "--name ' ': expected a non-empty name"),
    (["--seed", "-1"], "--seed -1: expected a value >= 0"),
    (["--stage2", "--expand", "--trim", "-2"], "--trim -2: expected a value >= 0"),
    (["--temperature", "1e-39"], "--temperature 1e-39: expected >= 2.93874e-39, so that 1/temperature is finite"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_values_are_one_clear_line_before_any_work(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main([*argv, "--run-dir", str(tmp_path / "run")], capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err
    assert message in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_cuda_device_without_cuda(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main(["--device", "cuda:0", "--print-config"], capsys)
    assert code == 2 and "--device cuda:0: CUDA is not available" in err


def test_every_acquisition_of_the_ops_is_accepted():
    from mulact.ops import ACQUISITION_METHODS

    assert "least_confidence" in ACQUISITION_METHODS
    for method in ACQUISITION_METHODS:
        assert resolve_config(None, None, {"acquisition": method}).acquisition == method


def test_invalid_config_files(tmp_path, capsys):
    cases = {
        "broken.yaml": ("rounds: [1, 2\n", "invalid YAML at line"),
        "tab.yaml": ("rounds: 2\n\tbudget: 3\n", "invalid YAML"),
        "list.yaml": ("- rounds\n- 2\n", "expected a mapping of option: value, got list"),
        "broken.json": ('{"rounds": 2,}', "invalid JSON"),
        "typo.yaml": ("roundz: 2\n", "unknown option(s) roundz"),
        "type.yaml": ("rounds: many\n", "--rounds many: expected an integer"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            load_config_file_and_resolve(str(path))
        code, _, err = run_main(["--config", str(path)], capsys)
        assert code == 2 and message in err and "Traceback" not in err and str(path) in err


def load_config_file_and_resolve(path):
    return resolve_config(None, path, {})


def test_yaml_values_need_no_quoting(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\niterations: 2e3\nhflip: no\nname: 2024\n")  # YAML 1.1: '1e-3' is a string
    cfg = resolve_config(None, str(f), {})
    assert cfg.lr == 1e-3 and cfg.iterations == 2000 and cfg.hflip is False and cfg.name == "2024"


def test_unusable_run_dir_and_demo_root(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (["--run-dir", str(a_file)], f"--run-dir {a_file}: exists and is not a directory"),
        (["--run-dir", str(a_file / "run")], f"--run-dir {a_file / 'run'}: cannot be created, {a_file} is a file"),
        (["--data-root", str(a_file)], f"--data-root {a_file}: is a file; expected a directory"),
        (["--superpixel-dir", str(a_file)], f"--superpixel-dir {a_file}: exists and is not a directory"),
    ]
    for argv, message in cases:
        code, _, err = run_main([*argv, "--print-config"], capsys)
        assert code == 2 and message in err, err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    import os

    if not os.access(ro, os.W_OK):  # root may write anywhere
        code, _, err = run_main(["--run-dir", str(ro / "run"), "--print-config"], capsys)
        assert code == 2 and f"{ro} is not writable" in err


def test_imagenet_weights_must_exist_for_the_encoder():
    from segmentation_models_pytorch.encoders import encoders

    without = next((n for n, e in encoders.items() if "imagenet" not in e["pretrained_settings"]), None)
    if without is None:
        pytest.skip("every smp encoder has ImageNet weights")
    with pytest.raises(ValueError, match=f"smp has no ImageNet weights for {without}"):
        resolve_config(None, None, {"encoder": without, "encoder_weights": "imagenet"})


def test_every_field_has_help_and_a_supported_type():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f.name
        convert(f.name, getattr(TrainConfig(), f.name))  # raises TypeError for a type it cannot parse


# issue 21: config-file and run-directory mistakes -> one line naming the option
def _config_cases(tmp_path):
    d = tmp_path / "confdir"
    d.mkdir()
    dup_yaml = tmp_path / "dup.yaml"
    dup_yaml.write_text("rounds: 2\nbudget: 5\nrounds: 3\n")
    dup_json = tmp_path / "dup.json"
    dup_json.write_text('{"rounds": 2, "rounds": 3}')
    return [
        (["--config", str(d)], f"--config {d}: is a directory; expected a YAML or JSON file"),
        (["--config", str(dup_yaml)], "found duplicate key 'rounds' (first at line 1)"),
        (["--config", str(dup_json)], f"--config {dup_json}: duplicate key 'rounds'"),
        (["--run-dir", "/proc/mulact-x"], "--run-dir /proc/mulact-x: cannot create a directory in /proc"),
        (["--run-dir", "/sys/mulact-x"], "--run-dir /sys/mulact-x: cannot create a directory in /sys"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_config_file_and_run_dir_mistakes_are_one_line(case, tmp_path, capsys):
    argv, message = _config_cases(tmp_path)[case]
    code, _, err = run_main([*argv, "--print-config"], capsys)
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_crop_larger_than_the_images_warns_once(caplog):
    import logging

    import torch

    from mulact.data.transforms import TrainTransform

    image, label, regions = torch.zeros(3, 128, 256), torch.zeros(128, 256, dtype=torch.int64), \
        torch.zeros(128, 256, dtype=torch.int64)
    t = TrainTransform(1000, (0.75, 1.5))
    with caplog.at_level(logging.WARNING, logger="mulact.data"):
        for _ in range(3):
            assert t(image, label, regions)[0].shape == (3, 1000, 1000)  # padded, as documented
    msgs = [r.getMessage() for r in caplog.records if r.name == "mulact.data"]
    assert msgs == ["crop 1000x1000 is larger than a 128x256 training image even at the largest scale 1.5 "
                    "(192x384): the crops are partly ignored padding; lower --crop-size or raise --scale-max if "
                    "that is not intended"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mulact.data"):
        TrainTransform(128, (0.75, 1.5))(image, label, regions)  # the demo preset: fits
    assert not [r for r in caplog.records if r.name == "mulact.data"]
