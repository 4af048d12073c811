"""What the labeling page can do, independent of the web framework: hand out queries under a
lease, save, undo, render.

Leases: a query shown in one browser is *leased* to that browser (its ``client`` id, one per
tab) for ``lease_seconds``, renewed while the page is open; no other browser gets it meanwhile,
and an answer for it from another browser is refused. Leases live in memory: after a server
restart every unanswered query is free again. Answers themselves are files
(:class:`mulact.al.answers.QueryStore`): written once, atomically, so restarting loses nothing.
"""
from __future__ import annotations

import os
import threading
import time

from mulact.al.answers import AnswerError, QueryStore
from mulact.runstore import RunDir

from .colors import class_colors
from .render import crop_view, full_view, png
from .schema import check_answer_fields

__all__ = ["LabelService", "open_run"]


def open_run(run_dir: str) -> RunDir:
    """``run_dir`` with its manifest open read-only: every file read from it is verified."""
    run = RunDir(run_dir)
    if not os.path.isfile(run.config):
        raise FileNotFoundError(f"RUN_DIR: {run_dir!r} is not a mulact run directory (no config.yaml); "
                                f"start one with `mulact-train --oracle human --run-dir {run_dir}`")
    run.open(readonly=True)
    return run


class LabelService:
    def __init__(self, run_dir: str, *, round: int | None = None, lease_seconds: float = 300.0, dataset=None):
        run = open_run(run_dir)
        self.store = QueryStore(run)
        self.cfg = run.read_train_config()
        t = self.store.open_round() if round is None else int(round)
        if t is None:
            raise FileNotFoundError(f"RUN_DIR: {run_dir!r} has no round waiting for answers (run "
                                    f"`mulact-train --oracle human` there first, or every round is done)")
        self.round = t
        self.record = self.store.queries(t)  # raises for an unknown round
        self.lease_seconds = float(lease_seconds)
        self._leases: dict[int, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._dataset = dataset
        self._pictures: dict[tuple[int, str], bytes] = {}
        self.colors = class_colors(self.cfg.dataset, self.record["class_names"], self.cfg.data_root)

    # -- dataset, pictures ---------------------------------------------------------------------
    @property
    def dataset(self):
        if self._dataset is None:
            from mulact.al.data import build_split

            self._dataset = build_split(self.cfg, "train")
        return self._dataset

    def picture(self, t: int, order: int, kind: str) -> bytes:
        self._check_round(t)
        q = self.store.query(t, order)
        if kind not in ("full", "crop"):
            raise AnswerError(f"picture: expected 'full' or 'crop', got {kind!r}", 404)
        key = (order, kind)
        if key not in self._pictures:
            image = self.dataset.load_image(q["image"])
            regions = self.dataset.load_regions(q["image"])
            view = full_view if kind == "full" else crop_view
            self._pictures[key] = png(view(image, regions, q["region"], q["bbox"]))
            if len(self._pictures) > 64:  # a small cache: the page asks for each picture once or twice
                self._pictures.pop(next(iter(self._pictures)))
        return self._pictures[key]

    # -- state -------------------------------------------------------------------------------
    def _check_round(self, t) -> None:
        if t != self.round:
            raise AnswerError(f"round: this server labels round {self.round}, got round {t!r}", 409)

    def info(self) -> dict:
        r = self.record
        return {"round": self.round, "labeling": r["labeling"], "class_names": r["class_names"],
                "colors": self.colors, "undefined_class": r["undefined_class"], "total": len(r["queries"])}

    def progress(self) -> dict:
        answered = self.store.answered(self.round)
        n = len(self.record["queries"])
        return {"round": self.round, "total": n, "answered": len(answered), "done": len(answered) == n,
                "closed": self.store.is_closed(self.round)}

    def _query_view(self, order: int, previous=None) -> dict:
        q = self.store.query(self.round, order)
        base = f"/api/picture/{self.round}/{order}"
        return {"order": order, "name": q["name"], "region": q["region"], "bbox": q["bbox"],
                "full": base + "/full.png", "crop": base + "/crop.png",
                "previous_classes": previous, **self.progress()}

    def _leased_by_other(self, order: int, client: str, now: float) -> bool:
        holder = self._leases.get(order)
        return holder is not None and holder[0] != client and holder[1] > now

    # -- actions -----------------------------------------------------------------------------
    def next_query(self, client: str) -> dict:
        """Lease the first unanswered query no other browser holds (or report the round done)."""
        client = _client(client)
        with self._lock:
            now = time.time()
            answered = self.store.answered(self.round)
            own = [o for o, (c, exp) in self._leases.items() if c == client and exp > now and o not in answered]
            if own:  # a reload shows the query this browser was on
                order = min(own)
            else:
                free = [o for o in range(len(self.record["queries"]))
                        if o not in answered and not self._leased_by_other(o, client, now)]
                if not free:
                    return {"order": None, **self.progress(),
                            "waiting": len(answered) < len(self.record["queries"])}
                order = free[0]
            self._leases[order] = (client, now + self.lease_seconds)
            return self._query_view(order)

    def renew(self, client: str, t: int, order: int) -> dict:
        client = _client(client)
        with self._lock:
            self._check_round(t)
            now = time.time()
            if self._leased_by_other(order, client, now):
                raise AnswerError(f"order: query {order} is being labeled in another browser", 409)
            self._leases[order] = (client, now + self.lease_seconds)
            return {"ok": True}

    def submit(self, client: str, answer: dict) -> dict:
        client = _client(client)
        with self._lock:
            if not isinstance(answer, dict):
                raise AnswerError(f"answer: expected a JSON object, got {type(answer).__name__}")
            check_answer_fields(answer)
            self._check_round(answer.get("round"))
            order = answer.get("order")
            now = time.time()
            if isinstance(order, int) and self._leased_by_other(order, client, now):
                raise AnswerError(f"order: query {order} is being labeled in another browser", 409)
            if isinstance(order, int) and (held := self.store.answer(self.round, order)) is not None \
                    and held.get("client") != client:
                # e.g. this tab undid the query and another server's tab answered it meanwhile
                raise AnswerError(f"order: query {order} of round {self.round} was answered in another browser "
                                  f"(annotator {held.get('annotator')!r}); that answer stands: the first answer "
                                  f"saved wins, and only its own browser can undo it", 409)
            rec = self.store.save_answer(self.round, {**answer, "client": client, "submitted_at": now})
            self._leases.pop(rec["order"], None)
            return {"saved": rec, **self.progress()}

    def undo(self, client: str, t: int) -> dict:
        """Remove this browser's most recent answer of the round and lease its query back."""
        client = _client(client)
        with self._lock:
            self._check_round(t)
            mine = [a for a in self.store.answers(self.round).values() if a.get("client") == client]
            if not mine:
                raise AnswerError("undo: this browser has no answer to undo in this round", 404)
            last = max(mine, key=lambda a: a["submitted_at"])
            self.store.remove_answer(self.round, last["order"])
            # the query this tab was on goes back to the others; the undone one is its own again
            self._leases = {o: h for o, h in self._leases.items() if h[0] != client}
            self._leases[last["order"]] = (client, time.time() + self.lease_seconds)
            return self._query_view(last["order"], previous=last["classes"])


def _client(client) -> str:
    if not isinstance(client, str) or not 8 <= len(client) <= 64 or not client.replace("-", "").isalnum():
        raise AnswerError(f"client: expected the page's browser id (8-64 letters, digits, '-'), got {client!r}")
    return client
