"""Keep labeling: a finished run continues with more rounds (and another budget for the rounds
still to come); anything that would change a finished round is refused."""
import json

from _tiny_run import TINY, cli


def _args(run, **over):
    args = list(TINY)
    for flag, value in over.items():
        flag = "--" + flag.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = str(value)
        else:
            args += [flag, str(value)]
    return [*args, "--run-dir", str(run), "--no-stage2"]


def _rounds(run):
    return json.loads((run / "metrics.json").read_text())["rounds"]


def test_more_rounds_continue_a_finished_run(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    rc = cli(_args(run, rounds=1), cache)
    assert rc.returncode == 0, rc.stderr[-3000:]
    first = _rounds(run)
    pool_round1 = json.loads((run / "selections" / "round_01.json").read_text())

    # two more rounds, with a larger budget for them
    rc = cli(_args(run, rounds=3, budget=40), cache)
    assert rc.returncode == 0, rc.stderr[-3000:]
    rounds = _rounds(run)
    assert [m["round"] for m in rounds] == [1, 2, 3]
    assert rounds[0] == first[0]  # the finished round is kept as it was
    assert json.loads((run / "selections" / "round_01.json").read_text()) == pool_round1
    assert 40 <= rounds[1]["clicks"] and 40 <= rounds[2]["clicks"]  # the new budget (overshoot < 1 region)
    assert first[0]["clicks"] < 40

    # fewer rounds than the run has selected: refused, nothing changes
    rc = cli(_args(run, rounds=2, budget=40), cache)
    assert rc.returncode == 1 and "--rounds 2" in rc.stderr and "3 rounds" in rc.stderr, rc.stderr[-2000:]
    # an option that shaped the finished rounds: refused as before
    rc = cli(_args(run, rounds=4, budget=40, lambda_ce=2), cache)
    assert rc.returncode == 1 and "different configuration" in rc.stderr and "lambda_ce" in rc.stderr
    assert [m["round"] for m in _rounds(run)] == [1, 2, 3]
