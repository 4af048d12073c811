"""``mulact-label``: answer a human-oracle run's queries in the browser, or export / import them.

    mulact-label RUN_DIR [--host 127.0.0.1] [--port 8765] [--annotator NAME]
    mulact-label export RUN_DIR [--round T] [--out DIR]
    mulact-label import RUN_DIR FILE

See the README, "Label your own data", for the file formats.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import sys

from mulact.al.answers import AnswerError, QueryStore

from .schema import read_answers_file

__all__ = ["export_round", "import_answers", "main"]

EXPORT_FORMAT = "mulact-queries/1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def export_round(run_dir: str, t: int | None, out: str | None = None) -> str:
    """Write ``queries.json`` and one outlined crop per query to ``out``; returns the JSON path."""
    from mulact.runstore import atomic_write, write_json

    from .service import LabelService

    service = LabelService(run_dir, round=t)
    t = service.round
    out = out or service.store.run.export(t)
    rec = service.record
    queries = []
    for q in rec["queries"]:
        crop = f"crops/q_{q['order']:05d}.png"
        atomic_write(os.path.join(out, crop), lambda fh, o=q["order"]: fh.write(service.picture(t, o, "crop")))
        queries.append({**q, "crop": crop})
    doc = {"format": EXPORT_FORMAT, "round": t, "labeling": rec["labeling"], "class_names": rec["class_names"],
           "colors": service.colors, "undefined_class": rec["undefined_class"], "queries": queries,
           "answers": [{"order": a["order"], "image": a["image"], "region": a["region"], "classes": a["classes"]}
                       for a in service.store.answers(t).values()]}
    path = os.path.join(out, "queries.json")
    write_json(path, doc)
    return path


def import_answers(run_dir: str, path: str) -> tuple[int, int]:
    """Validate every answer of ``path`` and write them all, or none; returns (round, count)."""
    doc = read_answers_file(path)
    store = QueryStore(run_dir)
    t = doc["round"]
    open_round = store.open_round()
    if t != open_round:
        raise AnswerError(f"round: {path!r} answers round {t}, but the round waiting for answers in "
                          f"{run_dir!r} is {open_round if open_round is not None else 'none'}", 409)
    annotator = doc.get("annotator")
    answers = [{**a, "annotator": a.get("annotator") or annotator} if isinstance(a, dict) else a
               for a in doc["answers"]]
    return t, store.import_answers(t, answers)


def _serve(argv) -> int:
    p = argparse.ArgumentParser(prog="mulact-label", description=(
        "Answer the queries of a `mulact-train --oracle human` run in the browser. Each answer is saved "
        "the moment it is submitted; rerun mulact-train when the round is complete. Other commands: "
        "`mulact-label export RUN_DIR`, `mulact-label import RUN_DIR FILE`."))
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (holds queries/round_XX.json)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; anything but loopback requires the "
                                                      "token printed in the URL")
    p.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    p.add_argument("--round", type=int, default=None, help="round to label (default: the one waiting for answers)")
    p.add_argument("--annotator", default="", help="annotator name prefilled on the page")
    p.add_argument("--lease-seconds", type=float, default=300.0,
                   help="how long a query shown in one browser is withheld from the others without activity")
    args = p.parse_args(argv)
    from werkzeug.serving import make_server

    from .app import create_app
    from .service import LabelService

    try:
        service = LabelService(args.run_dir, round=args.round, lease_seconds=args.lease_seconds)
    except (FileNotFoundError, AnswerError, ValueError) as err:
        print(f"mulact-label: error: {err}", file=sys.stderr)
        return 2
    token = None if _is_loopback(args.host) else secrets.token_urlsafe(16)
    app = create_app(service, token=token, annotator=args.annotator)
    server = make_server(args.host, args.port, app, threaded=True)
    host = args.host
    if host in ("0.0.0.0", "::"):  # every interface: name the machine, not the wildcard
        import socket

        host = socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{server.server_port}/" + (f"?token={token}" if token else "")
    prog = service.progress()
    print(f"mulact-label: round {service.round}, {prog['answered']} of {prog['total']} queries answered")
    print(f"mulact-label: open {url}   (Ctrl-C stops; answers are already saved)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nmulact-label: stopped", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        p = argparse.ArgumentParser(prog="mulact-label export", description=(
            "Write a round's queries as queries.json plus one PNG crop per query (region outlined) for "
            "labeling in another tool; answer with `mulact-label import`."))
        p.add_argument("run_dir", metavar="RUN_DIR")
        p.add_argument("--round", type=int, default=None, help="round (default: the one waiting for answers)")
        p.add_argument("--out", default=None, help="output directory (default RUN_DIR/export/round_XX)")
        args = p.parse_args(argv[1:])
        try:
            path = export_round(args.run_dir, args.round, args.out)
        except (FileNotFoundError, AnswerError) as err:
            print(f"mulact-label export: error: {err}", file=sys.stderr)
            return 2
        print(f"mulact-label export: wrote {path}")
        return 0
    if argv and argv[0] == "import":
        p = argparse.ArgumentParser(prog="mulact-label import", description=(
            "Validate a JSON file of answers and apply all of them, or none (see README)."))
        p.add_argument("run_dir", metavar="RUN_DIR")
        p.add_argument("file", metavar="FILE")
        args = p.parse_args(argv[1:])
        try:
            t, n = import_answers(args.run_dir, args.file)
        except (FileNotFoundError, AnswerError) as err:
            print(f"mulact-label import: error: {err}; nothing was changed", file=sys.stderr)
            return 2
        store = QueryStore(args.run_dir)
        left = store.queries(t)["num_queries"] - len(store.answered(t))
        print(f"mulact-label import: round {t}: saved {n} answers; {left} still missing")
        return 0
    if argv and argv[0] == "serve":
        argv = argv[1:]
    return _serve(argv)


if __name__ == "__main__":
    sys.exit(main())
