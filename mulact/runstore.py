"""Integrity of the files a run writes and reads: one atomic writer, a manifest of content
hashes, verified reads, directory locks and clean-up of interrupted writes.

* :func:`atomic_write` is the only way mulact writes a file it reads back later: the bytes go
  to ``.tmp-*`` in the target directory, are fsynced, renamed over the target, and the
  directory is fsynced. When the target lies under a directory with an open
  :class:`Manifest`, the write is recorded there (path, size, SHA-256).
* :class:`Manifest` (``manifest.json`` of a run directory) maps relative paths to content
  hashes. :meth:`Manifest.read_bytes` returns a file's bytes only if they hash to the recorded
  value, otherwise raises :class:`DamagedFileError` naming the file and what is wrong
  (missing, truncated, different content, not recorded). The caller decides by kind what
  to do (recompute with a warning, or stop): see the README's *Resume* section.
* :class:`DirLock` keeps a second process out of a run or superpixel directory.
* :func:`remove_temp_files` deletes the ``.tmp-*`` files an interrupted write left behind.
* :func:`publish_dir` renames a directory assembled next to its target into place (a
  generated data set, a seeded run): the one whole-directory counterpart of :func:`atomic_write`.
* :class:`RunDir` is a run directory as one object: one named accessor per file of a run
  (the table is in docs/design.md, "Where things live") and its verified reads and atomic writes.

Hash: SHA-256 (:mod:`hashlib`). On this project's targets (x86-64 with SHA-NI, ARMv8 with the
crypto extensions) it runs at the speed of BLAKE2b or faster, and a user can check a file by
hand with ``sha256sum``. Checking costs one pass over the bytes that are read anyway.

Crash safety of a recorded write: the new hash is recorded (with the previous one kept as
``prev``) *before* the rename and ``prev`` is dropped after it, so a process killed between
the two steps leaves either the old file (matching ``prev``: accepted, the step is redone) or
the new one (matching ``sha256``).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from typing import Callable

log = logging.getLogger("mulact.runstore")

__all__ = [
    "DamagedFileError",
    "atomic_torch_save",
    "DirLock",
    "LockedError",
    "Manifest",
    "RunStateError",
    "TMP_PREFIX",
    "RunDir",
    "atomic_write",
    "die_with_parent",
    "digest",
    "load_json",
    "load_npz",
    "load_torch",
    "publish_dir",
    "read_verified",
    "remove_temp_files",
    "write_json",
    "write_npz",
    "writing",
]

TMP_PREFIX = ".tmp-"
HASH = "sha256"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


def digest(data: bytes) -> str:
    """SHA-256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


class RunStateError(RuntimeError):
    """A file of a run cannot be used and cannot be recomputed; the message says what to do."""


class DamagedFileError(RunStateError):
    """``path`` does not hold what was recorded (``problem`` says how)."""

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LockedError(RunStateError):
    """Another live process holds the directory lock."""


# -- writing ----------------------------------------------------------------------------------

def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _serialize(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    buf = io.BytesIO()
    data(buf)
    return buf.getvalue()


def atomic_write(path: str | os.PathLike, data, *, record: bool = True,
                 before_rename: Callable[[str], None] | None = None, exclusive: bool = False) -> str:
    """Write ``data`` (bytes, or a callable that writes into a binary file object) to ``path``
    atomically and durably; return its SHA-256.

    With ``record`` (default) and an open :class:`Manifest` above ``path``, the write is
    recorded in it. Serialising to memory first lets the hash come from the bytes written
    without reading the file back. ``before_rename(sha256)`` runs once the bytes are durable
    and before they replace ``path``: a record made there is never missing for a file in place.
    ``exclusive``: create ``path`` only if it does not exist (the durable temporary file is
    hard-linked to its name, which fails with :class:`FileExistsError` for a second writer) —
    written once, never replaced, even by concurrent processes (human answers).
    """
    path = os.path.abspath(os.fspath(path))
    payload = _serialize(data)
    h = digest(payload)
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=f"-{os.path.basename(path)}.tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        manifest = _manifest_for(path) if record and not exclusive else None
        if manifest is not None:
            manifest._begin(path, h, len(payload))
        if before_rename is not None:
            before_rename(h)
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        _fsync_dir(d)
        if manifest is not None:
            manifest._commit(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return h


def write_json(path: str | os.PathLike, obj, *, sort_keys: bool = False) -> str:
    """``obj`` as JSON (indent 1, NaN allowed, one final newline) through :func:`atomic_write`."""
    text = json.dumps(obj, indent=1, allow_nan=True, sort_keys=sort_keys) + "\n"
    return atomic_write(path, text.encode())


def write_npz(path: str | os.PathLike, **arrays) -> str:
    """``numpy.savez`` of ``arrays`` through :func:`atomic_write`."""
    import numpy as np

    return atomic_write(path, lambda fh: np.savez(fh, **arrays))


def publish_dir(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the directory ``tmp``, assembled next to ``target``, into place in one rename.

    Its files and directories are fsynced first and the parent after the rename, so a crash
    leaves either no ``target`` or a whole one. ``target`` must not exist (:class:`OSError`
    otherwise).
    """
    for dirpath, _dirs, files in os.walk(tmp, topdown=False):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)
    os.rename(tmp, target)
    _fsync_dir(os.path.dirname(os.path.abspath(os.fspath(target))))


# -- verified reads of single files --------------------------------------------------------------

def read_verified(path, manifest: "Manifest | None" = None) -> bytes:
    """The bytes of ``path``, checked against ``manifest`` when given;
    :class:`DamagedFileError` if missing or not what was written."""
    if manifest is not None:
        return manifest.read_bytes(path)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise DamagedFileError(path, f"cannot be read ({exc.strerror})") from None


def load_npz(path, manifest: "Manifest | None" = None, *, what: str = "array archive") -> dict:
    """All arrays of an ``.npz`` file (verified when ``manifest`` is given); a torn or foreign
    file raises :class:`DamagedFileError` naming it, never a bare ``BadZipFile``."""
    import numpy as np

    data = read_verified(path, manifest)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError, OSError ...
        raise DamagedFileError(path, f"is not a readable {what} ({type(exc).__name__}: {exc})") from None


def load_json(path, manifest: "Manifest | None" = None, *, what: str = "JSON file"):
    data = read_verified(path, manifest)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise DamagedFileError(path, f"is not a readable {what} ({exc})") from None


def load_torch(path, manifest: "Manifest | None" = None, *, map_location="cpu", what: str = "checkpoint"):
    import torch

    data = read_verified(path, manifest)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # pickle/zip errors of a torn or foreign file
        raise DamagedFileError(path, f"is not a readable {what} ({type(exc).__name__}: {exc})") from None


def atomic_torch_save(path: str | os.PathLike, obj) -> str:
    """:func:`torch.save` of ``obj`` through :func:`atomic_write` (checkpoints, weights)."""
    import torch  # here, not at module level: the superpixel workers import this module too

    return atomic_write(path, lambda fh: torch.save(obj, fh))


WRITERS = ".writers"


@contextlib.contextmanager
def writing(directory: str | os.PathLike):
    """Shared lock held around a write into a directory that several processes write at once
    (a cache): :func:`remove_temp_files` with ``wait_for_writers`` never removes the temporary
    file of a write in flight."""
    os.makedirs(directory, exist_ok=True)
    fd = os.open(os.path.join(directory, WRITERS), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def remove_temp_files(root: str | os.PathLike, *, wait_for_writers: bool = False) -> list[str]:
    """Delete every ``.tmp-*`` file under ``root`` (leftovers of interrupted writes).

    Call it while holding the directory's :class:`DirLock` when only the holder writes there;
    with ``wait_for_writers`` it first waits for the writes in flight under :func:`writing`
    and keeps them out while it removes.
    """
    removed = []
    if not os.path.isdir(root):
        return removed
    fd = None
    if wait_for_writers:
        fd = os.open(os.path.join(root, WRITERS), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                if f.startswith(TMP_PREFIX):
                    p = os.path.join(dirpath, f)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                        removed.append(p)
    finally:
        if fd is not None:
            os.close(fd)
    if removed:
        log.info("removed %d temporary file(s) of interrupted writes under %s", len(removed), root)
    return removed


# -- manifest --------------------------------------------------------------------------------

_open_manifests: dict[str, "Manifest"] = {}
_registry_lock = threading.Lock()


def _manifest_for(path: str) -> "Manifest | None":
    with _registry_lock:
        best = None
        for root, m in _open_manifests.items():
            if path.startswith(root + os.sep) and (best is None or len(root) > len(best.root)):
                best = m
    if best is None or os.getpid() != best._pid:
        return None  # forked workers never write the parent's manifest
    if os.path.basename(path) == MANIFEST_NAME and os.path.dirname(path) == best.root:
        return None
    return best


class Manifest:
    """``manifest.json`` of a directory: ``{relative path: {"sha256", "size", "prev"?}}`` plus
    free-form ``meta``.

    Opening registers it, so every :func:`atomic_write` below ``root`` in this process is
    recorded; :meth:`close` unregisters. A directory that has files but no manifest (written
    by an older mulact) is *adopted*: its unrecorded files are hashed and trusted as they are,
    once, with a warning. A damaged manifest raises :class:`RunStateError`.

    ``readonly`` (the ranks other than 0 of a torchrun job): verify reads only; nothing is
    registered or saved, and a file that another process recorded after this one opened the
    manifest is found by reading ``manifest.json`` again.
    """

    def __init__(self, root: str | os.PathLike, *, readonly: bool = False):
        self.root = os.path.abspath(os.fspath(root))
        self.path = os.path.join(self.root, MANIFEST_NAME)
        self._pid = os.getpid()
        self._verified: dict[str, tuple] = {}
        self.entries: dict[str, dict] = {}
        self.meta: dict = {}
        self.adopting = False
        self.readonly = readonly
        if os.path.exists(self.path):
            self._load()
        else:
            self.adopting = any(not f.startswith(".") for f in os.listdir(self.root)) if os.path.isdir(self.root) else False
            if self.adopting:
                log.warning("%s has no %s (written by an older mulact?): its files are trusted as they are "
                            "and recorded now", self.root, MANIFEST_NAME)
        if not readonly:
            with _registry_lock:
                _open_manifests[self.root] = self

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                doc = json.loads(fh.read())
            body = json.dumps({"entries": doc["entries"], "meta": doc["meta"]}, sort_keys=True).encode()
            if doc.get("checksum") != digest(body):
                raise ValueError("its checksum does not match its content")
            self.entries, self.meta = doc["entries"], doc["meta"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunStateError(
                f"{self.path}: the manifest of this directory is damaged ({exc}); without it no file "
                f"here can be verified. Restore it from a backup, or delete it to trust the current "
                f"files as they are (they are then recorded anew).") from None

    def _reloaded(self, rel: str) -> dict | None:
        """A read-only manifest's entry for ``rel`` after reading ``manifest.json`` again."""
        if not self.readonly or not os.path.exists(self.path):
            return self.entries.get(rel)
        self._load()
        self.adopting = False
        return self.entries.get(rel)

    def close(self) -> None:
        with _registry_lock:
            if _open_manifests.get(self.root) is self:
                del _open_manifests[self.root]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- bookkeeping ----------------------------------------------------------------------
    def rel(self, path) -> str:
        return os.path.relpath(os.path.abspath(os.fspath(path)), self.root)

    def _save(self) -> None:
        if self.readonly:
            return
        body = {"entries": self.entries, "meta": self.meta}
        doc = {"format": MANIFEST_FORMAT, "hash": HASH,
               "checksum": digest(json.dumps(body, sort_keys=True).encode()), **body}
        atomic_write(self.path, (json.dumps(doc, indent=0, sort_keys=True) + "\n").encode(), record=False)

    def _begin(self, path: str, h: str, size: int) -> None:
        rel = self.rel(path)
        old = self.entries.get(rel)
        if old is not None and old.get("sha256") == h and "prev" not in old:
            return  # same content again: nothing to record
        # until the rename is done the file may still be any earlier version (None: absent)
        prev = [None] if old is None else [old["sha256"], *old.get("prev", [])]
        self.entries[rel] = {"sha256": h, "size": size, "prev": [p for p in dict.fromkeys(prev) if p != h]}
        self._save()

    def _commit(self, path: str) -> None:
        rel = self.rel(path)
        entry = self.entries.get(rel, {})
        st = os.stat(path)
        self._verified[rel] = (st.st_ino, st.st_size, st.st_mtime_ns, entry.get("sha256"))
        if "prev" in entry:
            del entry["prev"]
            self._save()

    def set_meta(self, **kw) -> None:
        self.meta.update(kw)
        self._save()

    def forget(self, path) -> None:
        """Delete ``path`` (if present) and its record (a read-only manifest only forgets it)."""
        rel = self.rel(path)
        if not self.readonly:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.root, rel))
        self._verified.pop(rel, None)
        if self.entries.pop(rel, None) is not None:
            self._save()

    def recorded(self, path) -> bool:
        """True if ``path`` should exist (a first write killed before its rename does not count)."""
        entry = self.entries.get(self.rel(path))
        if entry is None:
            return False
        return not (None in entry.get("prev", ()) and not os.path.exists(os.path.join(self.root, self.rel(path))))

    # -- verified reads -------------------------------------------------------------------
    def read_bytes(self, path) -> bytes:
        """The bytes of ``path`` if they are what was recorded; else :class:`DamagedFileError`."""
        full = os.path.join(self.root, self.rel(path))
        rel = self.rel(path)
        entry = self.entries.get(rel)
        try:
            with open(full, "rb") as fh:
                data = fh.read()
                st = os.fstat(fh.fileno())
        except FileNotFoundError:
            if entry is None:
                raise DamagedFileError(full, "does not exist") from None
            raise DamagedFileError(full, "is missing (it is recorded in the manifest)") from None
        except OSError as exc:
            raise DamagedFileError(full, f"cannot be read ({exc.strerror})") from None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self.readonly and (entry is None or digest(data) != entry["sha256"]):
            entry = self._reloaded(rel)  # written (again) by the process that writes this directory
        cached = self._verified.get(rel)
        if entry is not None and cached is not None and cached[:3] == key and cached[3] == entry["sha256"]:
            return data
        h = digest(data)
        if entry is None:
            if not self.adopting:
                raise DamagedFileError(full, "is not recorded in the run's manifest (not written by this run)")
            log.warning("%s: not recorded in the manifest; trusting it as it is", full)
            self.entries[rel] = {"sha256": h, "size": len(data)}
            self._save()
        elif h != entry["sha256"]:
            if h in entry.get("prev", ()):  # killed between recording and renaming: the old file is intact
                self.entries[rel] = {"sha256": h, "size": len(data)}
                self._save()
            elif len(data) != entry["size"]:
                raise DamagedFileError(full, f"is {len(data)} bytes, {entry['size']} were written "
                                             f"({'truncated' if len(data) < entry['size'] else 'bytes appended'})")
            else:
                raise DamagedFileError(full, "has other content than was written (SHA-256 mismatch: "
                                             "overwritten, or replaced by another file)")
        self._verified[rel] = (*key, h)
        return data

    def verify(self, path) -> None:
        self.read_bytes(path)


# -- locks ------------------------------------------------------------------------------------

_held_locks: dict[str, list] = {}


class DirLock:
    """Exclusive lock of a directory: ``<dir>/.lock``, held with ``flock`` for the process's life.

    ``flock`` is released by the kernel when the holder dies, however it dies, so a stale lock
    of a dead process never blocks (no PID files to age out, no PID-reuse races); the holder's
    PID, host and start time are written into the file only to name it in the refusal. One
    process may acquire the same directory more than once (reference counted). A job of many
    processes (torchrun) takes it once, in rank 0: see :meth:`for_job`.
    """

    def __init__(self, directory: str | os.PathLike, what: str = "directory"):
        self.dir = os.path.abspath(os.fspath(directory))
        self.path = os.path.join(self.dir, ".lock")
        self.what = what
        self._held = False

    @classmethod
    def for_job(cls, directory, what: str = "run directory") -> "DirLock | None":
        """The lock for rank 0 of a ``torchrun`` job (``RANK`` unset or 0); None for the other
        ranks, which share rank 0's claim on the directory."""
        return cls(directory, what) if int(os.environ.get("RANK", "0") or 0) == 0 else None

    def acquire(self) -> "DirLock":
        os.makedirs(self.dir, exist_ok=True)
        held = _held_locks.get(self.path)
        if held is not None and held[1] == os.getpid():
            held[2] += 1
            self._held = True
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockedError(f"{self.what} {self.dir} is in use by {self.holder()}; wait for it to finish "
                              f"or stop it, or use another directory") from None
        previous = self._read_info(fd)
        if previous:
            log.info("%s %s: taking over the lock of %s, which is no longer running", self.what, self.dir,
                     _describe(previous))
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        _held_locks[self.path] = [fd, os.getpid(), 1]
        self._held = True
        return self

    @staticmethod
    def _read_info(fd) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {}

    def holder(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return "another process"
        try:
            return _describe(self._read_info(fd))
        finally:
            os.close(fd)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        held = _held_locks.get(self.path)
        if held is None or held[1] != os.getpid():
            return
        held[2] -= 1
        if held[2] == 0:
            del _held_locks[self.path]
            with contextlib.suppress(OSError):
                os.ftruncate(held[0], 0)
            os.close(held[0])  # closing the last descriptor releases the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"])) if info.get("since") else "?"
    return f"PID {info['pid']} on host {info.get('host', '?')} (since {since})"


# -- child processes ---------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> None:
    """Make this (child) process receive ``sig`` when its parent dies (Linux ``prctl``).

    Used as the initializer of worker processes, so a ``kill -9`` of the parent leaves no
    worker behind. ``parent_pid`` closes the race of a parent that died before the call.
    Elsewhere than Linux it does nothing (those workers rely on their pools' own checks).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def _init_worker(parent_pid: int, base, worker_id: int) -> None:
    die_with_parent(parent_pid)
    if base is not None:
        base(worker_id)


def worker_init_fn(base: Callable | None = None):
    """DataLoader ``worker_init_fn`` that ties the worker's life to the current process
    (picklable, so it also works with the ``spawn`` start method)."""
    return functools.partial(_init_worker, os.getpid(), base)


# -- the run directory ----------------------------------------------------------------------------

def _run_file(name: str) -> property:
    """A :class:`RunDir` accessor: the path of ``name`` in the run directory."""
    return property(lambda self: os.path.join(self.root, name), doc=f"``{name}`` of the run")


class RunDir:
    """A run directory of ``mulact-train`` as one object: where each file lives and how it is
    read and written.

    Every file of a run has one accessor here (and nowhere else spells its path)::

        config.yaml               config           resolved configuration (a rerun must match it)
        manifest.json             manifest_path    SHA-256 of every file below (Manifest)
        oracle.npz                oracle           simulated oracle's answers (OracleTable)
        regions.npz               regions          human oracle's region table
        queries/round_XX.json     queries(t)       human oracle: the round's queries
        answers/round_XX/q_N.json answer(t, n)     human oracle: one file per answer
        pool.npz                  pool             labeled regions, labels, costs (RegionPool)
        selections/round_XX.json  selection(t)     the round's queries in selection order
        round_XX/stage{1,2}*.pt   stage(t, s, k)   checkpoints: final, "last" (resumable), "best"
        round_XX/pseudo/          pseudo(t)        stage-2 pseudo labels and their summary
        metrics.json/.csv, miou_vs_clicks.png      metrics_json, metrics_csv, plot
        model_smp.pt              smp_model        last finished round's model for smp alone
        export/round_XX/          export(t)        mulact-label export

    Reads go through :meth:`open`'s :class:`Manifest` (verified) once one is open, plain
    otherwise; writes go through :func:`atomic_write`, which records them in the open manifest.
    A finished run read from outside its training process (``mulact-predict``, the label
    export) is opened with :meth:`existing`.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        self.manifest: Manifest | None = None

    def __repr__(self) -> str:
        return f"RunDir({self.root!r})"

    # -- paths ------------------------------------------------------------------------------
    def _p(self, *parts) -> str:
        return os.path.join(self.root, *parts)

    config = _run_file("config.yaml")
    manifest_path = _run_file(MANIFEST_NAME)
    oracle = _run_file("oracle.npz")
    regions = _run_file("regions.npz")
    pool = _run_file("pool.npz")
    metrics_json = _run_file("metrics.json")
    metrics_csv = _run_file("metrics.csv")
    plot = _run_file("miou_vs_clicks.png")
    queries_dir = _run_file("queries")
    smp_model = _run_file("model_smp.pt")

    def queries(self, t: int) -> str:
        return self._p("queries", f"round_{t:02d}.json")

    def answers(self, t: int) -> str:
        return self._p("answers", f"round_{t:02d}")

    def answer(self, t: int, order: int) -> str:
        return os.path.join(self.answers(t), f"q_{order:05d}.json")

    def selection(self, t: int) -> str:
        return self._p("selections", f"round_{t:02d}.json")

    def round(self, t: int) -> str:
        return self._p(f"round_{t:02d}")

    def stage(self, t: int, stage: str, kind: str = "final") -> str:
        """Checkpoint of round ``t``'s ``stage`` ("stage1"/"stage2"): ``kind`` "final" (weights
        + training summary), "last" (resumable, removed once the stage is done) or "best"."""
        suffix = {"final": "", "last": "_last", "best": "_best"}
        if kind not in suffix:
            raise ValueError(f"kind: expected one of {', '.join(suffix)}, got {kind!r}")
        return os.path.join(self.round(t), f"{stage}{suffix[kind]}.pt")

    def pseudo(self, t: int) -> str:
        return os.path.join(self.round(t), "pseudo")

    def pseudo_label(self, t: int, image: int) -> str:
        """Round ``t``'s stage-2 pseudo-label map of train image ``image`` (int16 ``.npy``)."""
        return os.path.join(self.pseudo(t), f"{int(image):06d}.npy")

    def pseudo_summary(self, t: int) -> str:
        """Accuracy and counts of round ``t``'s pseudo labels, and the SHA-256 of every map."""
        return os.path.join(self.pseudo(t), "summary.json")

    def export(self, t: int) -> str:
        return self._p("export", f"round_{t:02d}")

    # -- state ------------------------------------------------------------------------------
    @classmethod
    def existing(cls, root: str | os.PathLike, what: str = "run_dir") -> "RunDir":
        """An existing run directory with its manifest open for verified reads only: no lock
        is taken and nothing is recorded, so a run that ``mulact-train`` is extending can be
        read at the same time. :class:`FileNotFoundError` starting with ``what`` (the argument
        that named ``root``) when ``root`` is not a run directory.
        """
        run = cls(root)
        if not os.path.isdir(run.root):
            raise FileNotFoundError(f"{what}: {os.fspath(root)!r} "
                                    f"{'is not a directory' if os.path.exists(run.root) else 'does not exist'}")
        if not os.path.isfile(run.config):
            raise FileNotFoundError(f"{what}: {os.fspath(root)!r} is not a mulact run directory (no config.yaml); "
                                    f"give the directory mulact-train wrote (its --run-dir, default runs/<name>)")
        run.open(readonly=True)
        return run

    def open(self, *, readonly: bool = False) -> Manifest:
        """Open the manifest (recording writes unless ``readonly``); reads are verified from now."""
        self.manifest = Manifest(self.root, readonly=readonly)
        return self.manifest

    def close(self) -> None:
        if self.manifest is not None:
            self.manifest.close()

    def lock(self) -> "DirLock | None":
        """The run directory's lock for this process of a job (None for ranks other than 0)."""
        return DirLock.for_job(self.root, "run directory")

    def exists(self, path) -> bool:
        """``path`` is there, or the manifest says it should be (a missing file is damage)."""
        return os.path.isfile(path) or (self.manifest is not None and self.manifest.recorded(path))

    def forget(self, path) -> None:
        """Delete ``path`` and its record."""
        if self.manifest is not None and not self.manifest.readonly:
            self.manifest.forget(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        _fsync_dir(os.path.dirname(os.path.abspath(os.fspath(path))))

    # -- verified reads, atomic writes --------------------------------------------------------
    def read_bytes(self, path) -> bytes:
        return read_verified(path, self.manifest)

    def read_json(self, path, what: str = "JSON file"):
        return load_json(path, self.manifest, what=what)

    def read_npz(self, path, what: str = "array archive") -> dict:
        return load_npz(path, self.manifest, what=what)

    def read_torch(self, path, what: str = "checkpoint", map_location="cpu"):
        return load_torch(path, self.manifest, what=what, map_location=map_location)

    def read_config(self) -> dict:
        """The options saved in ``config.yaml`` (verified), as a mapping; raises
        :class:`FileNotFoundError` when this is not a run directory."""
        import yaml

        if not self.exists(self.config):
            raise FileNotFoundError(f"{self.root}: not a mulact run directory (no config.yaml)")
        try:
            saved = yaml.safe_load(self.read_bytes(self.config)) or {}
        except yaml.YAMLError as exc:
            raise DamagedFileError(self.config, f"is not readable YAML ({exc})") from None
        if not isinstance(saved, dict):
            raise DamagedFileError(self.config, "is not a mapping of options")
        return saved

    def read_train_config(self):
        """The run's :class:`~mulact.config.TrainConfig`: ``config.yaml`` (see :meth:`read_config`)
        read through the option converter, so every value is checked as on the command line;
        options that a later mulact dropped are ignored."""
        import dataclasses

        from mulact.config import TrainConfig, apply_overrides  # here: config imports the datasets

        known = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = {k: v for k, v in self.read_config().items() if k in known}
        return apply_overrides(TrainConfig(), saved, source=self.config)

    def read_metrics(self) -> dict:
        """``metrics.json`` as ``{"class_names": [...], "rounds": [per-round records]}``
        (``{"class_names": None, "rounds": []}`` before the first round is done), verified
        when the manifest is open; :class:`DamagedFileError` when unusable."""
        path = self.metrics_json
        if not self.exists(path):
            return {"class_names": None, "rounds": []}
        doc = self.read_json(path, what="metrics file")
        rounds = doc.get("rounds") if isinstance(doc, dict) else None
        if not isinstance(rounds, list) or not all(isinstance(m, dict) and "round" in m for m in rounds):
            raise DamagedFileError(path, "is not a metrics file (no list of numbered rounds)")
        return doc

    def recorded_rounds(self) -> list[dict]:
        """The per-round records of ``metrics.json`` (see :meth:`read_metrics`)."""
        return self.read_metrics()["rounds"]

    write_bytes = staticmethod(atomic_write)
    write_json = staticmethod(write_json)
    write_npz = staticmethod(write_npz)
    write_torch = staticmethod(atomic_torch_save)
