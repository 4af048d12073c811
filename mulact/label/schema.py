"""The shape of an answers file (``mulact-label import``) and of one answer, checked before any
answer is looked up in the run.

Everything a person can get wrong in the file itself is refused here with the key and the
value: bytes that are not UTF-8, JSON that is not JSON (``NaN``/``Infinity`` included, which
Python's parser would otherwise accept), nesting no answers file has, a file too large for a
round's answers, unknown keys, wrong types, non-finite or negative times and a class listed
twice. What needs the run (the query exists, the class ids are the dataset's, the round is the
open one) is checked by :class:`mulact.al.answers.QueryStore`. Format: README, "Label your own
data".
"""
from __future__ import annotations

import json
import math
import os

from mulact.al.answers import AnswerError

__all__ = ["MAX_CLICKS", "MAX_FILE_BYTES", "check_answer_fields", "read_answers_file"]

# A round rarely has more than a few thousand queries of ~200 bytes each; 16 MiB leaves a wide
# margin and keeps a stray multi-gigabyte file from being read into memory.
MAX_FILE_BYTES = 16 * 2**20
# One click per class toggle of one query; far more than any page sends.
MAX_CLICKS = 10_000

# The keys of an exported queries.json may stay in the file, so that an edited export imports.
FILE_KEYS = ("round", "answers", "annotator", "format", "labeling", "class_names", "colors", "undefined_class",
             "queries")
ANSWER_KEYS = ("order", "image", "region", "classes", "seconds", "click_seconds", "annotator", "round")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unknown_keys(where: str, obj: dict, allowed) -> None:
    extra = [k for k in obj if k not in allowed]
    if extra:
        shown = ", ".join(repr(k[:40] + "..." if len(k) > 40 else k) for k in extra[:5])
        raise AnswerError(f"{where}: unknown key{'s' if len(extra) > 1 else ''} {shown}; "
                          f"expected only {', '.join(allowed)}")


def _time(where: str, v) -> float:
    if not _is_number(v) or not math.isfinite(v) or v < 0:
        raise AnswerError(f"{where}: expected a finite, non-negative number of seconds, got {v!r}")
    return v


def check_answer_fields(ans, where: str = "answer", extra_keys=()) -> None:
    """Types and ranges of one answer object (keys :data:`ANSWER_KEYS` plus ``extra_keys``)."""
    if not isinstance(ans, dict):
        raise AnswerError(f"{where}: expected an object, got {type(ans).__name__}")
    _unknown_keys(where, ans, ANSWER_KEYS + tuple(extra_keys))
    for key in ("round", "order", "image", "region"):
        if key in ans and not (_is_int(ans[key]) and ans[key] >= 0):
            raise AnswerError(f"{where}.{key}: expected a non-negative integer, got {ans[key]!r}")
    classes = ans.get("classes")
    if isinstance(classes, list):
        seen = set()
        for c in classes:
            if _is_int(c):
                if c in seen:
                    raise AnswerError(f"{where}.classes: class {c} is listed twice; list each class at most once")
                seen.add(c)
    if ans.get("seconds") is not None:
        _time(f"{where}.seconds", ans["seconds"])
    clicks = ans.get("click_seconds")
    if clicks is not None:
        if not isinstance(clicks, list):
            raise AnswerError(f"{where}.click_seconds: expected a list of numbers, got {type(clicks).__name__}")
        if len(clicks) > MAX_CLICKS:
            raise AnswerError(f"{where}.click_seconds: {len(clicks)} clicks; at most {MAX_CLICKS} are kept per query")
        for k, s in enumerate(clicks):
            _time(f"{where}.click_seconds[{k}]", s)
    annotator = ans.get("annotator")
    if annotator is not None and not isinstance(annotator, str):
        raise AnswerError(f"{where}.annotator: expected a name (a string), got {annotator!r}")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def read_answers_file(path: str) -> dict:
    """The checked document of an answers file: ``{"round", "answers", "annotator"?, ...}``."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise AnswerError(f"FILE: {path!r} is {size} bytes; an answers file may have at most {MAX_FILE_BYTES} "
                              f"bytes ({MAX_FILE_BYTES // 2**20} MiB)")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise AnswerError(f"FILE: no such file {path!r}") from None
    except IsADirectoryError:
        raise AnswerError(f"FILE: {path!r} is a directory; expected a JSON file") from None
    if len(raw) > MAX_FILE_BYTES:  # grew while being read, or not a regular file
        raise AnswerError(f"FILE: {path!r} has more than {MAX_FILE_BYTES} bytes; an answers file may have at most "
                          f"{MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES // 2**20} MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise AnswerError(f"FILE: {path!r} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          f"save it as UTF-8 JSON") from None
    try:
        doc = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise AnswerError(f"FILE: {path!r} is nested too deeply to be an answers file") from None
    except ValueError as err:  # JSONDecodeError, or NaN/Infinity from _no_constant
        raise AnswerError(f"FILE: {path!r} is not valid JSON ({err})") from None
    if not isinstance(doc, dict) or not _is_int(doc.get("round")) or not isinstance(doc.get("answers"), list):
        got = (f"'round' = {doc.get('round')!r}" if isinstance(doc, dict) and not _is_int(doc.get("round"))
               else type(doc).__name__)
        raise AnswerError(f"FILE: {path!r} must hold an object with 'round' (integer) and 'answers' (list), got "
                          f"{got}; see README 'Label your own data'")
    _unknown_keys("FILE", doc, FILE_KEYS)
    if doc.get("annotator") is not None and not isinstance(doc["annotator"], str):
        raise AnswerError(f"FILE.annotator: expected a name (a string), got {doc['annotator']!r}")
    for k, a in enumerate(doc["answers"]):
        check_answer_fields(a, f"answers[{k}]")
    return doc
