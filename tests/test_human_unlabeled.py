"""Human mode on a dataset whose train split has images and no labels at all: the loop asks,
trains on the answers and evaluates, without a train label file anywhere."""
import json
import shutil

from _human_run import HUMAN
from _tiny_run import cli

from mulact.al.answers import QueryStore


def test_human_mode_runs_on_a_train_split_without_label_files(tmp_path, monkeypatch):
    from mulact.data.demo import ensure_demo_dataset

    cache = tmp_path / "cache"
    monkeypatch.setenv("MULACT_CACHE", str(cache))
    demo = ensure_demo_dataset(num_train=6, num_val=2, height=64, width=128, progress=False)
    data = tmp_path / "unlabeled"  # a Cityscapes-layout copy: the demo cache would repair deletions
    shutil.copytree(demo, data)
    shutil.rmtree(data / "gtFine" / "train")
    assert not list(data.rglob("*train*labelIds*"))
    run = tmp_path / "run"
    args = ["--run-dir", str(run), *HUMAN, "--preset", "demo", "--dataset", "cityscapes", "--data-root", str(data)]

    r = cli(args, cache)
    assert r.returncode == 3 and "wrote 20 queries" in r.stderr, r.stderr[-3000:]
    store = QueryStore(str(run))
    for q in store.queries(1)["queries"]:
        store.save_answer(1, {"order": q["order"], "classes": [q["order"] % 3], "seconds": 2.0})

    r = cli(args, cache)  # trains round 1 on the answers, then asks round 2's queries
    assert r.returncode == 3 and "round 2: wrote" in r.stderr, r.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())["rounds"]
    assert [x["round"] for x in m] == [1] and m[0]["clicks"] == 20 and m[0]["annotation_seconds"] == 40.0
    assert 0.0 <= m[0]["miou"] <= 1.0
    assert m[0]["percent_full_cost"] is None  # nobody answered every region: unknown, not NaN
    assert "n/a% of full" in r.stdout + r.stderr
    assert (run / "round_01" / "stage1.pt").is_file()


def test_a_missing_train_label_is_still_an_error_for_the_simulated_oracle(tmp_path, monkeypatch):
    from mulact.data.demo import ensure_demo_dataset

    cache = tmp_path / "cache"
    monkeypatch.setenv("MULACT_CACHE", str(cache))
    demo = ensure_demo_dataset(num_train=6, num_val=2, height=64, width=128, progress=False)
    data = tmp_path / "unlabeled"
    shutil.copytree(demo, data)
    shutil.rmtree(data / "gtFine" / "train")
    args = ["--run-dir", str(tmp_path / "run"), *HUMAN, "--oracle", "simulated", "--preset", "demo",
            "--dataset", "cityscapes", "--data-root", str(data)]
    r = cli(args, cache)
    assert r.returncode == 2 and "gtFine/train" in r.stderr, r.stderr[-3000:]
