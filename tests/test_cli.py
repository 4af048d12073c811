import dataclasses
import json

import pytest
from _tiny_run import TINY, cli

from mulact.cli import build_parser, main
from mulact.config import PRESETS, TrainConfig, resolve_config


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out
        assert f.metadata.get("help")
    for name in ("--preset", "--config"):
        assert name in out


def test_unknown_option_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--rounds", "2", "--no-such-option", "1"])
    assert e.value.code != 0
    assert "--no-such-option" in capsys.readouterr().err


def test_bad_typed_value(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--rounds", "three"])
    assert e.value.code != 0
    assert "--rounds" in capsys.readouterr().err


def test_bad_dataset_path_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere" / "cityscapes"
    r = cli(["--dataset", "cityscapes", "--data-root", str(missing), "--run-dir", str(tmp_path / "run"),
             "--encoder-weights", "null"], tmp_path)
    assert r.returncode != 0
    assert str(missing) in r.stderr
    assert "leftImg8bit" in r.stderr and "gtFine" in r.stderr
    assert not (tmp_path / "run").exists()


def test_missing_data_root_for_real_dataset(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--dataset", "voc"])
    assert e.value.code != 0
    assert "--data-root null: required for dataset 'voc'" in capsys.readouterr().err


def test_precedence_preset_file_flags(tmp_path):
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("rounds: 7\nbudget: 123\nlambda-mp: 0\n")
    cfg = resolve_config(None, str(cfg_file), {"budget": 55})
    assert cfg.dataset == "demo" and cfg.encoder == PRESETS["demo"]["encoder"]  # demo preset by default
    assert cfg.rounds == 7 and cfg.lambda_mp == 0.0 and cfg.budget == 55
    js = tmp_path / "exp.json"
    js.write_text(json.dumps({"dataset": "cityscapes", "data_root": "x", "iterations": 10}))
    cfg = resolve_config(None, str(js), {})
    assert cfg.nu == 6.0 and cfg.crop_size == 769 and cfg.budget == 100_000 and cfg.iterations == 10
    cfg = resolve_config("voc", None, {"data_root": "x"})
    assert (cfg.nu, cfg.iterations, cfg.batch_size, cfg.crop_size, cfg.lr, cfg.budget) == (12.0, 30_000, 12, 513, 1e-3, 10_000)


def test_config_file_unknown_key_and_bad_choice(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("roundz: 3\n")
    with pytest.raises(ValueError, match="roundz"):
        resolve_config(None, str(bad), {})
    with pytest.raises(ValueError, match="acquisition"):
        resolve_config(None, None, {"acquisition": "coreset"})
    with pytest.raises(ValueError, match="--config .*none.yaml: no such file"):
        resolve_config(None, str(tmp_path / "none.yaml"), {})


def test_flags_stay_text_until_the_one_converter(capsys):
    args = build_parser().parse_args(["--no-hflip", "--encoder-weights", "null", "--lr", "1e-3", "--iterations", "2e3"])
    assert args.hflip is False and args.encoder_weights == "null" and args.lr == "1e-3"
    assert not hasattr(args, "rounds")  # options not given are absent, not None
    cfg = resolve_config(None, None, {k: v for k, v in vars(args).items() if k not in ("preset", "config",
                                                                                       "print_config", "verbose")})
    assert cfg.hflip is False and cfg.encoder_weights is None and cfg.lr == 1e-3 and cfg.iterations == 2000


def test_tiny_run_end_to_end_outputs(tmp_path):
    run = tmp_path / "run"
    r = cli(["--run-dir", str(run), "--stage2", "--stage2-iterations", "4", *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mIoU" in r.stdout
    for name in ("config.yaml", "oracle.npz", "pool.npz", "metrics.json", "metrics.csv", "miou_vs_clicks.png",
                 "selections/round_01.json", "selections/round_03.json", "round_03/stage1.pt", "round_03/stage2.pt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())["rounds"]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    cum = 0
    for m in metrics:
        cum += m["clicks"]
        assert m["cumulative_clicks"] == cum and m["clicks"] >= 25
        assert 0 <= m["stage1_miou"] <= 1 and 0 <= m["stage2_miou"] <= 1
        assert 0 < m["percent_full_cost"] < 100
        assert len(m["iou"]) == 19
    assert not list(run.glob("round_*/stage1_last.pt"))
    # rerunning a finished run does nothing new; changing the protocol is refused
    r = cli(["--run-dir", str(run), "--stage2", "--stage2-iterations", "4", *TINY], tmp_path)
    assert r.returncode == 0
    r = cli(["--run-dir", str(run), *TINY, "--budget", "99"], tmp_path)
    assert r.returncode != 0 and "budget" in r.stderr
