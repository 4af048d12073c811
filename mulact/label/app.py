"""The Flask app of ``mulact-label``: one page, a small JSON API, the query pictures.

Routes (all JSON bodies; errors are ``{"error": message}`` with a 4xx status, nothing changed):

    GET  /                                   the labeling page
    GET  /api/info                           round, labeling, class names and colours, total
    POST /api/next      {client}             lease and return the next query (or order: null)
    POST /api/renew     {client, round, order}
    POST /api/answer    {client, round, order, classes, seconds, click_seconds, annotator}
    POST /api/undo      {client, round}      remove this browser's last answer, return its query
    GET  /api/picture/<round>/<order>/<full|crop>.png

Only the run's queries are reachable (pictures by round and order, never by path) and static
files come from the package. When a ``token`` is set (the server binds to a non-loopback
address), every request but the static files must carry it (``?token=`` or the
``X-Mulact-Token`` header); the page passes it on. The API takes JSON only, so a foreign web
page cannot post to it without a CORS preflight, which this app never grants.
"""
from __future__ import annotations

import hmac

from flask import Flask, jsonify, render_template, request

from mulact.al.answers import AnswerError

from .service import LabelService

__all__ = ["create_app"]


def create_app(service: LabelService, *, token: str | None = None, annotator: str = "") -> Flask:
    app = Flask(__name__)
    app.config["JSON_SORT_KEYS"] = False

    @app.before_request
    def check_token():
        if token is None or request.endpoint == "static":
            return None
        given = request.args.get("token") or request.headers.get("X-Mulact-Token") or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return jsonify(error="token: missing or wrong; open the URL that mulact-label printed"), 403
        return None

    @app.errorhandler(AnswerError)
    def answer_error(err: AnswerError):
        return jsonify(error=str(err)), err.status

    @app.errorhandler(404)
    def not_found(err):
        return jsonify(error=f"not found: {request.path}"), 404

    def body() -> dict:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise AnswerError("request: expected a JSON object body (Content-Type: application/json)", 415
                              if not request.is_json else 400)
        return data

    @app.get("/")
    def page():
        return render_template("label.html", info=service.info(), token=token or "", annotator=annotator)

    @app.get("/api/info")
    def info():
        return jsonify({**service.info(), **service.progress()})

    @app.post("/api/next")
    def next_query():
        return jsonify(service.next_query(body().get("client")))

    @app.post("/api/renew")
    def renew():
        b = body()
        return jsonify(service.renew(b.get("client"), b.get("round"), b.get("order")))

    @app.post("/api/answer")
    def answer():
        b = body()
        return jsonify(service.submit(b.pop("client", None), b))

    @app.post("/api/undo")
    def undo():
        b = body()
        return jsonify(service.undo(b.get("client"), b.get("round")))

    @app.get("/api/picture/<int:t>/<int:order>/<kind>.png")
    def picture(t: int, order: int, kind: str):
        data = service.picture(t, order, kind)
        resp = app.response_class(data, mimetype="image/png")
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    @app.after_request
    def no_framing(resp):
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    return app
