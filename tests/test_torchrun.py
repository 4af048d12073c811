"""`mulact-train` under torchrun (2 CPU processes, gloo): kill both ranks mid-run, resume with
2 processes (same selections and mIoU as an uninterrupted 2-process run) or with 1 process."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from _tiny_run import TINY, cli, env_for

# The tiny run of the other pipeline tests, 2 rounds (round 2 is a PixBal acquisition over the
# sharded pool scan), stage 2 on (sharded pseudo labels).
ARGS = [*TINY, "--rounds", "2", "--iterations", "4", "--stage2-iterations", "2"]


def _torchrun(run, cache, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "mulact.cli", "--run-dir", str(run), *ARGS]


def _descendants(pid):
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _kill_all_when(proc, path, timeout=600):
    """SIGKILL torchrun and both ranks at once as soon as ``path`` exists."""
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run finished before {path.name} appeared (rc={proc.returncode})")
        if time.time() - t0 > timeout:
            break
        time.sleep(0.01)
    pids = _descendants(proc.pid)
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert path.exists(), f"timed out waiting for {path}"


def _run(cmd, cache):
    r = subprocess.run(cmd, env=env_for(cache), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


def _selections(run):
    out = []
    for t in (1, 2):
        rec = json.loads((run / "selections" / f"round_{t:02d}.json").read_text())
        out.append([(r["image"], r["region"], tuple(r["classes"]), r["cost"]) for r in rec["regions"]])
    return out


def _mious(run):
    return [m["miou"] for m in json.loads((run / "metrics.json").read_text())["rounds"]]


def test_torchrun_kill_and_resume_with_two_or_one_process(tmp_path):
    ref = tmp_path / "ref"
    r = _run(_torchrun(ref, tmp_path), tmp_path)
    assert "[2 processes]" in r.stdout and r.stdout.count("mulact-train:") == 1  # only rank 0 talks

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(killed, tmp_path), env=env_for(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _kill_all_when(proc, killed / "round_01" / "stage1_last.pt")
    assert not (killed / "round_01" / "stage1.pt").exists() or not (killed / "metrics.json").exists()
    one = tmp_path / "one"
    shutil.copytree(killed, one)

    _run(_torchrun(killed, tmp_path), tmp_path)  # same command: both ranks resume
    assert _selections(killed) == _selections(ref)
    assert _mious(killed) == _mious(ref)

    # the same interrupted 2-process run finished by one plain process
    r = cli(["--run-dir", str(one), *ARGS], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _selections(one)[0] == _selections(ref)[0]
    assert len(_mious(one)) == 2
    assert json.loads((one / "round_02" / "pseudo" / "summary.json").read_text())["images"] > 0
