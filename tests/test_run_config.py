"""RunDir.read_train_config: a run's config.yaml back as a checked TrainConfig."""
import pytest

from mulact.config import TrainConfig
from mulact.runstore import RunDir


def _run_dir(tmp_path, text):
    (tmp_path / "config.yaml").write_text(text)
    return RunDir(tmp_path)


def test_values_converted_and_dropped_options_ignored(tmp_path):
    run = _run_dir(tmp_path, "region_size: 8\nbudget: '40'\nstage2: false\nan_option_mulact_dropped: 3\n")
    cfg = run.read_train_config()
    assert isinstance(cfg, TrainConfig)
    assert (cfg.region_size, cfg.budget, cfg.stage2) == (8, 40, False)
    assert cfg.rounds == TrainConfig().rounds  # not in the file: the default


def test_bad_value_names_the_file_and_the_option(tmp_path):
    run = _run_dir(tmp_path, "region_size: large\n")
    with pytest.raises(ValueError, match=r"config\.yaml: --region-size large: expected an integer"):
        run.read_train_config()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a mulact run directory"):
        RunDir(tmp_path).read_train_config()
