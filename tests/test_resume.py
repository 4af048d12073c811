"""Kill-and-resume: a run killed mid-training and restarted reaches the same selections."""
import json
import signal
import time

import numpy as np
import pytest
import torch

from mulact.engine.train import ResumableBatchSampler, TrainSettings, train_model

from _tiny_run import TINY, cli, popen


def _selections(run):
    out = []
    for t in (1, 2, 3):
        rec = json.loads((run / "selections" / f"round_{t:02d}.json").read_text())
        out.append([(r["image"], r["region"], tuple(r["classes"]), r["cost"]) for r in rec["regions"]])
    return out


def _kill_when(proc, path, timeout=300):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run finished before {path.name} appeared (rc={proc.returncode})")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_mid_training_and_resume_gives_same_selections(tmp_path):
    ref = tmp_path / "ref"
    r = cli(["--run-dir", str(ref), *TINY], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    run = tmp_path / "killed"
    args = ["--run-dir", str(run), *TINY]
    mid_training = 0
    for t in (1, 2):
        proc = popen(args, tmp_path)
        _kill_when(proc, run / f"round_{t:02d}" / "stage1_last.pt")
        mid_training += (run / f"round_{t:02d}" / "stage1_last.pt").exists() and \
            not (run / f"round_{t:02d}" / "stage1.pt").exists()
    assert mid_training >= 1, "no kill landed inside a training stage"
    r = cli(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _selections(run) == _selections(ref)
    a = json.loads((ref / "metrics.json").read_text())["rounds"]
    b = json.loads((run / "metrics.json").read_text())["rounds"]
    assert [m["miou"] for m in a] == [m["miou"] for m in b]
    with np.load(ref / "pool.npz") as za, np.load(run / "pool.npz") as zb:
        for k in ("labels", "cost", "round"):
            assert np.array_equal(za[k], zb[k])


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 2, 1)
        self.drop = torch.nn.Dropout(0.5)

    def encoder_parameters(self):
        return self.enc.parameters()

    def head_parameters(self):
        return self.head.parameters()

    def forward(self, x):
        return self.head(self.drop(self.enc(x)))


def _loader_fn(data, iterations):
    def make(start):
        sampler = ResumableBatchSampler(np.arange(len(data)), 3, iterations, seed=11, start=start)
        return ({"x": torch.stack([data[i] * (1 + s % 7) / 7 for i, s in b])} for b in sampler)
    return make


def _step(model, batch, progress):
    loss = model(batch["x"]).pow(2).mean()
    return loss, {}


@pytest.mark.parametrize("stop", [1, 3, 4])
def test_train_model_resume_is_bit_exact(tmp_path, stop):
    data = torch.randn(5, 3, 6, 6)
    settings = TrainSettings(iterations=6, lr=1e-2, checkpoint_interval=1, seed=3)
    full = _Tiny()
    train_model(full, _loader_fn(data, 6), _step, settings, str(tmp_path / "a.pt"))
    part = _Tiny()
    # interrupted run: the same command with fewer iterations done, then resumed
    ck = str(tmp_path / "b.pt")

    class Stop(Exception):
        pass

    def stopping(model, batch, progress):
        if round(progress * 6) == stop:
            raise Stop
        return _step(model, batch, progress)

    with pytest.raises(Stop):
        train_model(part, _loader_fn(data, 6), stopping, settings, ck)
    resumed = _Tiny()
    train_model(resumed, _loader_fn(data, 6), _step, settings, ck)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_sampler_batches_are_a_pure_function_of_iteration():
    s = ResumableBatchSampler([4, 8, 15], batch_size=2, iterations=10, seed=1)
    all_batches = list(s)
    assert len(all_batches) == 10 and all(len(b) == 2 for b in all_batches)
    late = list(ResumableBatchSampler([4, 8, 15], 2, 10, seed=1, start=6))
    assert late == all_batches[6:]
    # each epoch is a permutation of the images
    flat = [i for b in all_batches for i, _ in b]
    assert sorted(flat[:3]) == [4, 8, 15] and sorted(flat[3:6]) == [4, 8, 15]


class _TinyNoDropout(_Tiny):
    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Identity()


def test_compiled_training_step_matches_eager_and_checkpoints_plain_weights(tmp_path):
    """``--compile``: the training step runs under torch.compile; the weights follow the eager
    run (float32 rounding of fused kernels aside) and checkpoints hold the plain module's keys,
    so a compiled run resumes uncompiled and vice versa. Without dropout: compiled code draws
    its masks from inductor's own generator (seeded from torch's, so still a function of the
    iteration), not eager's stream."""
    data = torch.randn(5, 3, 6, 6)
    eager = _TinyNoDropout()
    plain = TrainSettings(iterations=4, lr=1e-2, checkpoint_interval=2, seed=3)
    train_model(eager, _loader_fn(data, 4), _step, plain, str(tmp_path / "eager.pt"))
    compiled = _TinyNoDropout()
    settings = TrainSettings(iterations=4, lr=1e-2, checkpoint_interval=2, seed=3, compile=True)
    summary = train_model(compiled, _loader_fn(data, 4), _step, settings, str(tmp_path / "compiled.pt"))
    assert summary["compiled"] is True
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-4, atol=1e-5)
    ck = torch.load(tmp_path / "compiled.pt", weights_only=False)
    assert set(ck["model"]) == set(eager.state_dict())  # no `_orig_mod.` prefixes
