"""Queries put to a human annotator and the answers received, as files of the run directory.

Layout (``RUN_DIR``)::

    queries/round_XX.json            the round's queries in score order (written by mulact-train)
    answers/round_XX/q_NNNNN.json    one file per answered query (written by mulact-label)

A query is ``{"order", "image", "name", "region", "bbox": [x0, y0, x1, y1] (pixels, end
exclusive), "pixels", "score"}``; an answer is ``{"round", "order", "image", "region",
"classes": [class ids, the undefined class = num_classes], "seconds", "click_seconds",
"annotator", "client", "submitted_at"}`` (format documented in the README, "Label your own
data").

One file per answer makes "saved the moment it is submitted" and "never written twice" cheap
and safe across processes: the answer goes through :func:`mulact.runstore.atomic_write` with
``exclusive`` (a durable temporary file *hard-linked* to its final name, which fails if the
name exists); a reader sees either no answer or a whole one. Every path comes from
:class:`mulact.runstore.RunDir`. The round is *closed* once ``selections/round_XX.json`` exists (the loop
wrote the answers into the pool); answers of a closed round can no longer change.
"""
from __future__ import annotations

import json
import os
import time

from mulact.runstore import RunDir, atomic_write, write_json

__all__ = ["AnswerError", "QueryStore", "validate_classes"]


class AnswerError(ValueError):
    """An answer that cannot be accepted; nothing was changed. ``status`` is an HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def validate_classes(classes, num_classes: int, labeling: str, where: str = "classes") -> list[int]:
    """Sorted unique class ids of an answer; raises :class:`AnswerError` naming the bad value."""
    if not isinstance(classes, list) or not classes:
        raise AnswerError(f"{where}: expected a non-empty list of class ids 0..{num_classes} "
                          f"({num_classes} = other / none of these), got {classes!r}")
    out = set()
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= num_classes:
            raise AnswerError(f"{where}: unknown class {c!r}; expected an integer 0..{num_classes} "
                              f"({num_classes} = other / none of these)")
        out.add(c)
    if labeling == "dominant" and len(out) != 1:
        raise AnswerError(f"{where}: dominant-class labeling takes exactly one class, got {sorted(out)}")
    return sorted(out)


class QueryStore:
    """The queries and answers of one run directory (see the module docstring)."""

    def __init__(self, run: "RunDir | str"):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.dir = self.run.root
        self._queries: dict[int, dict] = {}

    # -- paths ------------------------------------------------------------------------------
    def queries_path(self, t: int) -> str:
        return self.run.queries(t)

    def answers_dir(self, t: int) -> str:
        return self.run.answers(t)

    def answer_path(self, t: int, order: int) -> str:
        return self.run.answer(t, order)

    def is_closed(self, t: int) -> bool:
        """The loop has taken the round's answers into the pool; they are final."""
        return os.path.isfile(self.run.selection(t))

    # -- queries ----------------------------------------------------------------------------
    def rounds(self) -> list[int]:
        d = self.run.queries_dir
        if not os.path.isdir(d):
            return []
        out = []
        for f in os.listdir(d):
            if f.startswith("round_") and f.endswith(".json") and f[6:-5].isdigit():
                out.append(int(f[6:-5]))
        return sorted(out)

    def open_round(self) -> int | None:
        """The latest round with queries that is not closed (the one to label), else None."""
        open_ = [t for t in self.rounds() if not self.is_closed(t)]
        return open_[-1] if open_ else None

    def write_queries(self, t: int, record: dict) -> None:
        write_json(self.queries_path(t), record)
        self._queries.pop(t, None)

    def queries(self, t: int) -> dict:
        if t not in self._queries:
            path = self.queries_path(t)
            if not os.path.isfile(path):
                raise AnswerError(f"round: no queries for round {t} in {self.dir} (rounds with queries: "
                                  f"{self.rounds() or 'none'})", 404)
            self._queries[t] = self.run.read_json(path, what="query file")
        return self._queries[t]

    def query(self, t: int, order: int) -> dict:
        qs = self.queries(t)["queries"]
        if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order < len(qs):
            raise AnswerError(f"order: no query {order!r} in round {t} (expected 0..{len(qs) - 1})", 404)
        return qs[order]

    # -- answers ----------------------------------------------------------------------------
    def answer(self, t: int, order: int) -> dict | None:
        try:
            with open(self.answer_path(t, order)) as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None

    def answered(self, t: int) -> set[int]:
        d = self.answers_dir(t)
        if not os.path.isdir(d):
            return set()
        return {int(f[2:-5]) for f in os.listdir(d) if f.startswith("q_") and f.endswith(".json")}

    def answers(self, t: int) -> dict[int, dict]:
        return {k: a for k in sorted(self.answered(t)) if (a := self.answer(t, k)) is not None}

    def check_answer(self, t: int, ans: dict, where: str = "answer") -> dict:
        """Validate one answer against round ``t``'s queries; returns the normalised record."""
        rec = self.queries(t)
        if not isinstance(ans, dict):
            raise AnswerError(f"{where}: expected an object, got {type(ans).__name__}")
        if "round" in ans and ans["round"] != t:
            raise AnswerError(f"{where}: answer for round {ans['round']!r}, but round {t} is being labeled", 409)
        q = self.query(t, ans.get("order"))
        for key in ("image", "region"):
            if key in ans and ans[key] != q[key]:
                raise AnswerError(f"{where}: {key} {ans[key]!r} does not match query {q['order']} of round {t} "
                                  f"({key} {q[key]})", 409 if key == "region" else 404)
        classes = validate_classes(ans.get("classes"), rec["undefined_class"], rec["labeling"], f"{where}.classes")
        seconds = ans.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0):
            raise AnswerError(f"{where}.seconds: expected a non-negative number, got {seconds!r}")
        clicks = ans.get("click_seconds") or []
        if not isinstance(clicks, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                                   for s in clicks):
            raise AnswerError(f"{where}.click_seconds: expected a list of numbers, got {clicks!r}")
        annotator = ans.get("annotator") or "anonymous"
        if not isinstance(annotator, str) or len(annotator) > 100:
            raise AnswerError(f"{where}.annotator: expected a name of at most 100 characters, got {annotator!r}")
        return {"round": t, "order": q["order"], "image": q["image"], "region": q["region"], "classes": classes,
                "seconds": None if seconds is None else float(seconds),
                "click_seconds": [float(s) for s in clicks], "annotator": annotator,
                "client": str(ans.get("client") or ""), "submitted_at": ans.get("submitted_at") or time.time()}

    def save_answer(self, t: int, ans: dict) -> dict:
        """Validate and write one answer, exactly once; raises :class:`AnswerError` otherwise."""
        if self.is_closed(t):
            raise AnswerError(f"round: round {t} is closed (its answers were used for training)", 409)
        rec = self.check_answer(t, ans)
        try:
            atomic_write(self.answer_path(t, rec["order"]), (json.dumps(rec, indent=1) + "\n").encode(),
                         exclusive=True)
        except FileExistsError:
            raise AnswerError(f"order: query {rec['order']} of round {t} is already answered", 409) from None
        return rec

    def remove_answer(self, t: int, order: int) -> dict:
        if self.is_closed(t):
            raise AnswerError(f"round: round {t} is closed (its answers were used for training)", 409)
        ans = self.answer(t, order)
        if ans is None:
            raise AnswerError(f"order: query {order} of round {t} has no answer", 404)
        self.run.forget(self.answer_path(t, order))
        return ans

    def import_answers(self, t: int, answers: list) -> int:
        """Validate every answer first, then write them; all or nothing. Returns the count."""
        if self.is_closed(t):
            raise AnswerError(f"round: round {t} is closed (its answers were used for training)", 409)
        if not isinstance(answers, list):
            raise AnswerError(f"answers: expected a list, got {type(answers).__name__}")
        checked, seen = [], set()
        existing = self.answered(t)
        for k, a in enumerate(answers):
            rec = self.check_answer(t, a, where=f"answers[{k}]")
            if rec["order"] in seen or rec["order"] in existing:
                raise AnswerError(f"answers[{k}]: query {rec['order']} of round {t} is answered twice "
                                  f"({'in this file' if rec['order'] in seen else 'already in the run'})", 409)
            seen.add(rec["order"])
            checked.append(rec)
        written = []
        try:
            for rec in checked:
                written.append(self.save_answer(t, rec)["order"])
        except BaseException:
            for order in written:  # a concurrent writer raced us: undo our part
                self.run.forget(self.answer_path(t, order))
            raise
        return len(written)
