"""One process per run / superpixel directory; a killed holder's lock is taken over; workers
die with their parent; the unit behaviour of the run store (manifest, interrupted writes)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from _tiny_run import TINY, cli, env_for

from mulact.runstore import DamagedFileError, DirLock, LockedError, Manifest, atomic_write

SMALL = [*TINY, "--rounds", "1", "--iterations", "4", "--encoder", "mobilenet_v2"]


def _holder(path, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            info = json.loads(path.read_text() or "{}")
            if info.get("pid"):
                return info
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"nobody took {path}")


_HOLD = """
import sys, time
from mulact.runstore import DirLock
DirLock(sys.argv[1], "run directory").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_second_process_is_refused_and_a_killed_holder_is_taken_over(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.time()
        r = cli(["--run-dir", str(run), *SMALL], tmp_path)
        assert r.returncode == 1
        assert f"PID {holder.pid} on host {socket.gethostname()}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert time.time() - t0 < 120  # refused at start, not after doing any work
        assert not (run / "pool.npz").exists() and not (run / "manifest.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    r = cli(["--run-dir", str(run), *SMALL], tmp_path)  # the dead holder's lock is free again
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "metrics.json").exists()


def test_two_training_processes_exactly_one_runs(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "mulact.cli", "--run-dir", str(run), *SMALL]
    procs = [subprocess.Popen(args, env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    refused = outs[[p.returncode for p in procs].index(1)][1]
    assert "is in use by PID" in refused, refused


def test_lock_in_process_is_reentrant_and_released(tmp_path):
    a = DirLock(tmp_path).acquire()
    b = DirLock(tmp_path).acquire()  # the same process: no self-deadlock
    b.release()
    code = f"from mulact.runstore import DirLock; DirLock({str(tmp_path)!r}).acquire()"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode != 0
    a.release()
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_torchrun_ranks_other_than_zero_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert DirLock.for_job(tmp_path) is None
    monkeypatch.setenv("RANK", "0")
    assert DirLock.for_job(tmp_path) is not None


def test_superpixel_directory_lock_refuses_second_precompute(tmp_path):
    from mulact.data import ensure_demo_dataset

    root = ensure_demo_dataset(tmp_path / "demo", num_train=2, num_val=1, height=32, width=64, progress=False)
    out = tmp_path / "sp"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out / "train")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, "-m", "mulact.data.precompute", "--no-progress", "--dataset", "cityscapes",
                            "--root", str(root), "--split", "train", "--out", str(out), "--region-size", "8"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and f"PID {holder.pid}" in r.stderr, r.stderr
    finally:
        holder.kill()
        holder.wait()


def _children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(d))
    return kids


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux-only")
def test_precompute_workers_die_with_their_parent(tmp_path):
    from mulact.data import ensure_demo_dataset

    root = ensure_demo_dataset(tmp_path / "demo", num_train=40, num_val=1, height=64, width=128, progress=False)
    proc = subprocess.Popen([sys.executable, "-m", "mulact.data.precompute", "--no-progress", "--dataset", "cityscapes",
                             "--root", str(root), "--split", "train", "--out", str(tmp_path / "sp"),
                             "--region-size", "4", "--workers", "2"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    t0 = time.time()
    workers = []
    while len(workers) < 2:
        assert proc.poll() is None and time.time() - t0 < 120, "no workers started"
        workers = _children(proc.pid)
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the parent only, not its process group
    proc.wait()
    deadline = time.time() + 5
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.05)
    left = [w for w in workers if _alive(w)]
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"


# -- run store units -----------------------------------------------------------------------------

def test_manifest_detects_each_kind_of_damage(tmp_path):
    with Manifest(tmp_path) as m:
        atomic_write(tmp_path / "a.bin", b"0123456789")
        atomic_write(tmp_path / "b.bin", b"abcdefghij")
        assert m.read_bytes(tmp_path / "a.bin") == b"0123456789"
    (tmp_path / "a.bin").write_bytes(b"01234")
    (tmp_path / "b.bin").write_bytes(b"0123456789")  # same size, another file's content
    (tmp_path / "c.bin").write_bytes(b"foreign")
    m = Manifest(tmp_path)
    try:
        with pytest.raises(DamagedFileError, match="a.bin: is 5 bytes, 10 were written"):
            m.read_bytes(tmp_path / "a.bin")
        with pytest.raises(DamagedFileError, match="b.bin: has other content"):
            m.read_bytes(tmp_path / "b.bin")
        with pytest.raises(DamagedFileError, match="c.bin: is not recorded"):
            m.read_bytes(tmp_path / "c.bin")
        (tmp_path / "a.bin").unlink()
        with pytest.raises(DamagedFileError, match="a.bin: is missing"):
            m.read_bytes(tmp_path / "a.bin")
    finally:
        m.close()


def test_kill_between_record_and_rename_keeps_the_old_file_valid(tmp_path, monkeypatch):
    with Manifest(tmp_path):
        atomic_write(tmp_path / "pool.npz", b"old")

        real = os.replace

        def killed(src, dst):  # the process dies after recording the new hash, before the rename
            if str(dst).endswith("pool.npz"):
                raise KeyboardInterrupt
            real(src, dst)

        monkeypatch.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            atomic_write(tmp_path / "pool.npz", b"new!")
        monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with Manifest(tmp_path) as m:
        assert m.entries["pool.npz"]["prev"] and m.entries["pool.npz"]["sha256"] not in m.entries["pool.npz"]["prev"]
        assert m.read_bytes(tmp_path / "pool.npz") == b"old"  # the previous version is accepted
        assert "prev" not in m.entries["pool.npz"]
    with Manifest(tmp_path) as m:
        assert m.read_bytes(tmp_path / "pool.npz") == b"old"


def test_directory_written_before_manifests_is_adopted(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with Manifest(tmp_path) as m:
        assert m.adopting and m.read_bytes(tmp_path / "metrics.json") == b"{}"
    (tmp_path / "metrics.json").write_text("[]")
    with Manifest(tmp_path) as m:
        with pytest.raises(DamagedFileError):
            m.read_bytes(tmp_path / "metrics.json")


def test_lock_error_is_a_runstate_error(tmp_path):
    a = DirLock(tmp_path).acquire()
    try:
        code = (f"from mulact.runstore import DirLock, LockedError\n"
                f"try:\n    DirLock({str(tmp_path)!r}, 'run directory').acquire()\n"
                f"except LockedError as e:\n    print(e)")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert f"run directory {tmp_path} is in use by PID {os.getpid()}" in r.stdout, r.stdout + r.stderr
    finally:
        a.release()
    assert issubclass(LockedError, RuntimeError)


_LOADER = """
import os, sys, time, torch
from mulact.runstore import worker_init_fn

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 4
    def __getitem__(self, i):
        with open(sys.argv[1], "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(120)  # busy in an item: torch's own parent check (between items) cannot run
        return i

for _ in torch.utils.data.DataLoader(Slow(), num_workers=1, worker_init_fn=worker_init_fn()):
    pass
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux-only")
def test_dataloader_workers_die_with_their_parent(tmp_path):
    pid_file = tmp_path / "worker.pid"
    proc = subprocess.Popen([sys.executable, "-c", _LOADER, str(pid_file)])
    t0 = time.time()
    while not pid_file.exists() or not pid_file.read_text():
        assert proc.poll() is None and time.time() - t0 < 120, "the worker never started"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 5
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.05)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the DataLoader worker outlived its parent"


def test_first_write_killed_before_its_rename_counts_as_never_written(tmp_path, monkeypatch):
    real = os.replace

    def killed(src, dst):
        if str(dst).endswith("pool.npz"):
            raise KeyboardInterrupt
        real(src, dst)

    with Manifest(tmp_path):
        monkeypatch.setattr(os, "replace", killed)
        with pytest.raises(KeyboardInterrupt):
            atomic_write(tmp_path / "pool.npz", b"first")
        monkeypatch.undo()
    with Manifest(tmp_path) as m:
        assert not (tmp_path / "pool.npz").exists() and not m.recorded(tmp_path / "pool.npz")
        atomic_write(tmp_path / "pool.npz", b"first")
        assert m.recorded(tmp_path / "pool.npz") and "prev" not in m.entries["pool.npz"]
