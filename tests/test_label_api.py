"""The labeling server's API (Flask test client), the answer store, export/import."""
import json

import numpy as np
import pytest
from _human_run import HUMAN, copy_run, start_human_run, template_human_run

from mulact.al.answers import QueryStore
from mulact.label.app import create_app
from mulact.label.cli import export_round, import_answers
from mulact.label.cli import main as label_main
from mulact.label.service import LabelService


@pytest.fixture(scope="module")
def template_run(tmp_path_factory):
    return template_human_run(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def run(template_run, tmp_path, monkeypatch):
    src, cache = template_run
    monkeypatch.setenv("MULACT_CACHE", str(cache))
    return copy_run(src, tmp_path / "run")


def _client(run, **kw):
    service = LabelService(str(run))
    return create_app(service, **kw).test_client(), service


def _files(run):
    return sorted(p.name for p in (run / "answers" / "round_01").glob("q_*.json")) \
        if (run / "answers" / "round_01").exists() else []


A, B = "client-aaaa-1111", "client-bbbb-2222"


def test_queries_file_describes_each_region(run):
    rec = json.loads((run / "queries" / "round_01.json").read_text())
    assert rec["round"] == 1 and rec["labeling"] == "multi" and rec["num_queries"] == 20
    assert rec["planned_clicks"] == pytest.approx(30.0) and rec["expected_classes_per_region"] == 1.5
    scores = [q["score"] for q in rec["queries"]]
    assert scores == sorted(scores, reverse=True)
    from mulact.al.data import build_split
    from mulact.label.service import open_run

    ds = build_split(open_run(str(run)).read_train_config(), "train")
    for q in rec["queries"][:5]:
        ys, xs = np.nonzero(ds.load_regions(q["image"]) == q["region"])
        assert q["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert q["pixels"] == len(ys) and q["name"] == ds.names()[q["image"]]
    assert not (run / "oracle.npz").exists()  # no ground-truth table in human mode


def test_two_browsers_never_get_the_same_query_and_never_answer_twice(run):
    c, _ = _client(run)
    qa = c.post("/api/next", json={"client": A}).get_json()
    qb = c.post("/api/next", json={"client": B}).get_json()
    assert (qa["order"], qb["order"]) == (0, 1)
    assert c.post("/api/next", json={"client": A}).get_json()["order"] == 0  # a reload keeps its query
    r = c.post("/api/answer", json={"client": B, "round": 1, "order": 0, "classes": [0]})
    assert r.status_code == 409 and "another browser" in r.get_json()["error"]
    r = c.post("/api/answer", json={"client": A, "round": 1, "order": 0, "classes": [13, 0], "seconds": 2.5,
                                    "click_seconds": [1.0, 2.0], "annotator": "ann"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["answered"] == 1
    saved = json.loads((run / "answers" / "round_01" / "q_00000.json").read_text())
    assert saved["classes"] == [0, 13] and saved["seconds"] == 2.5 and saved["annotator"] == "ann"
    assert saved["click_seconds"] == [1.0, 2.0] and saved["client"] == A
    r = c.post("/api/answer", json={"client": A, "round": 1, "order": 0, "classes": [1]})
    assert r.status_code == 409 and "already answered" in r.get_json()["error"]
    assert json.loads((run / "answers" / "round_01" / "q_00000.json").read_text())["classes"] == [0, 13]
    assert c.post("/api/next", json={"client": A}).get_json()["order"] == 2  # 1 is B's


@pytest.mark.parametrize("change, status, words", [
    ({"classes": [99]}, 400, "unknown class 99"),
    ({"classes": []}, 400, "non-empty list"),
    ({"classes": ["road"]}, 400, "unknown class 'road'"),
    ({"order": 500}, 404, "no query 500"),
    ({"image": 4242}, 404, "image 4242"),
    ({"region": 4242}, 409, "region 4242"),
    ({"round": 2}, 409, "round 1"),
    ({"seconds": -1}, 400, "non-negative"),
])
def test_bad_answers_are_refused_and_change_nothing(run, change, status, words):
    c, service = _client(run)
    q = c.post("/api/next", json={"client": A}).get_json()
    q0 = service.store.query(1, 0)
    body = {"client": A, "round": 1, "order": q["order"], "image": q0["image"], "region": q0["region"],
            "classes": [0], **change}
    r = c.post("/api/answer", json=body)
    assert r.status_code == status and words in r.get_json()["error"], r.get_json()
    assert _files(run) == []


def test_undo_removes_only_this_browsers_last_answer(run):
    c, _ = _client(run)
    for client in (A, B, A):
        q = c.post("/api/next", json={"client": client}).get_json()
        assert c.post("/api/answer", json={"client": client, "round": 1, "order": q["order"],
                                           "classes": [q["order"] % 3]}).status_code == 200
    assert _files(run) == ["q_00000.json", "q_00001.json", "q_00002.json"]
    u = c.post("/api/undo", json={"client": A, "round": 1}).get_json()
    assert u["order"] == 2 and u["previous_classes"] == [2]
    assert _files(run) == ["q_00000.json", "q_00001.json"]
    assert c.post("/api/next", json={"client": B}).get_json()["order"] == 3  # 2 is back with A
    assert c.post("/api/next", json={"client": A}).get_json()["order"] == 2
    r = c.post("/api/undo", json={"client": "client-cccc-3333", "round": 1})
    assert r.status_code == 404 and _files(run) == ["q_00000.json", "q_00001.json"]


def test_pictures_are_served_by_round_and_order_only(run):
    c, service = _client(run)
    r = c.get("/api/picture/1/0/crop.png")
    assert r.status_code == 200 and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2

    img = cv2.imdecode(np.frombuffer(c.get("/api/picture/1/0/full.png").data, np.uint8), cv2.IMREAD_COLOR)
    q = service.store.query(1, 0)
    ds = service.dataset
    assert img.shape[:2] == ds.load_regions(q["image"]).shape
    inside = ds.load_regions(q["image"]) == q["region"]
    orig = ds.load_image(q["image"]).astype(float).mean()
    assert img[~inside].astype(float).mean() < 0.6 * orig  # surroundings dimmed
    for path in ("/api/picture/2/0/crop.png", "/api/picture/1/99/crop.png", "/api/picture/1/0/raw.png",
                 "/static/../config.yaml", "/static/%2e%2e/config.yaml", "/api/picture/1/0/../../../config.yaml",
                 "/config.yaml", "/queries/round_01.json"):
        r = c.get(path)
        assert r.status_code in (404, 409), (path, r.status_code)
        assert b"oracle: human" not in r.data and b"planned_clicks" not in r.data  # no file content


def test_token_required_off_loopback(run):
    c, _ = _client(run, token="s3cret-token")
    assert c.get("/").status_code == 403
    assert c.post("/api/next", json={"client": A}).status_code == 403
    assert c.get("/api/picture/1/0/crop.png").status_code == 403
    page = c.get("/?token=s3cret-token")
    assert page.status_code == 200 and b"s3cret-token" in page.data
    assert c.post("/api/next", json={"client": A}, headers={"X-Mulact-Token": "s3cret-token"}).status_code == 200
    assert c.get("/static/label.js").status_code == 200


def test_page_lists_classes_and_progress(run):
    c, _ = _client(run)
    html = c.get("/").get_data(as_text=True)
    assert "round 1" in html and "road" in html and "multi-class" in html
    info = c.get("/api/info").get_json()
    assert info["total"] == 20 and info["answered"] == 0 and info["undefined_class"] == len(info["class_names"])
    assert info["colors"][0] == "#804080"  # Cityscapes road colour (128, 64, 128)
    r = c.post("/api/next", data="client=x")
    assert r.status_code == 415 and "JSON" in r.get_json()["error"]


def test_export_then_import_all_or_nothing(run, tmp_path):
    path = export_round(str(run), 1, str(tmp_path / "exp"))
    doc = json.loads(open(path).read())
    assert doc["format"] == "mulact-queries/1" and len(doc["queries"]) == 20
    assert (tmp_path / "exp" / doc["queries"][0]["crop"]).read_bytes()[:4] == b"\x89PNG"
    answers = [{"order": q["order"], "image": q["image"], "region": q["region"], "classes": [0]}
               for q in doc["queries"][:5]]
    bad = answers + [{"order": 6, "image": doc["queries"][6]["image"], "region": doc["queries"][6]["region"],
                      "classes": [77]}]
    f = tmp_path / "answers.json"
    f.write_text(json.dumps({"round": 1, "annotator": "ext", "answers": bad}))
    assert label_main(["import", str(run), str(f)]) == 2
    assert _files(run) == []
    f.write_text(json.dumps({"round": 1, "answers": answers + [answers[0]]}))
    assert label_main(["import", str(run), str(f)]) == 2 and _files(run) == []
    f.write_text(json.dumps({"round": 2, "answers": answers}))
    assert label_main(["import", str(run), str(f)]) == 2 and _files(run) == []
    f.write_text(json.dumps({"round": 1, "annotator": "ext", "answers": answers}))
    assert import_answers(str(run), str(f)) == (1, 5)
    assert len(_files(run)) == 5
    assert json.loads((run / "answers" / "round_01" / "q_00000.json").read_text())["annotator"] == "ext"
    assert label_main(["import", str(run), str(f)]) == 2 and len(_files(run)) == 5  # duplicates


def test_rerun_with_missing_answers_says_how_many(run, template_run):
    _, cache = template_run
    store = QueryStore(str(run))
    for q in store.queries(1)["queries"][:7]:
        store.save_answer(1, {"order": q["order"], "classes": [0]})
    r = start_human_run(run, cache)
    assert r.returncode == 3 and "13 of 20 queries are not answered yet" in r.stderr, r.stderr[-2000:]
    assert not (run / "round_01").exists() and not (run / "pool.npz").exists()


def test_unknown_oracle_is_a_clear_error(tmp_path):
    from _tiny_run import cli

    r = cli(["--run-dir", str(tmp_path / "r"), *HUMAN, "--oracle", "crowd"], tmp_path)
    assert r.returncode != 0 and "oracle" in r.stderr and "crowd" in r.stderr


def test_dominant_labeling_one_click_per_query_round_trip(template_run, tmp_path, monkeypatch):
    _, cache = template_run
    monkeypatch.setenv("MULACT_CACHE", str(cache))
    run = tmp_path / "dom"
    r = start_human_run(run, cache, "--labeling", "dominant", "--rounds", "1")
    assert r.returncode == 3, r.stderr[-3000:]
    rec = json.loads((run / "queries" / "round_01.json").read_text())
    assert rec["labeling"] == "dominant" and rec["num_queries"] == 30 and rec["expected_classes_per_region"] == 1.0
    c, service = _client(run)
    q = c.post("/api/next", json={"client": A}).get_json()
    r = c.post("/api/answer", json={"client": A, "round": 1, "order": q["order"], "classes": [0, 1]})
    assert r.status_code == 400 and "exactly one class" in r.get_json()["error"] and _files(run) == []
    assert "covers most" in c.get("/").get_data(as_text=True)
    for q in rec["queries"]:
        service.store.save_answer(1, {"order": q["order"], "classes": [q["order"] % 20], "seconds": 1.0})
    r = start_human_run(run, cache, "--labeling", "dominant", "--rounds", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())["rounds"][0]
    assert m["clicks"] == 30 and m["planned_clicks"] == 30 and m["annotation_seconds"] == 30.0
    with np.load(run / "pool.npz") as z:
        assert int((z["round"] == 1).sum()) == 30 and int(z["cost"].sum()) == 30
        flat = z["selection_1"]
        expected = [1 << (q["order"] % 20) for q in rec["queries"]]
        assert [int(b) for b in z["labels"][flat]] == expected


def _good_answer(run):
    q = QueryStore(str(run)).query(1, 0)
    return {"order": 0, "image": q["image"], "region": q["region"], "classes": [0]}


# issue 21: every way an answers file can be wrong in itself -> (file bytes, words of the message)
_BAD_FILES = {
    "not UTF-8": (lambda a: b'{"round": 1, "answers": [], "annotator": "\xff\xfe"}', "not UTF-8 text (byte 0xff"),
    "nested too deeply": (lambda a: b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "round true": (lambda a: json.dumps({"round": True, "answers": [a]}).encode(), "'round' = True"),
    "a million class ids": (lambda a: json.dumps({"round": 1, "answers": [{**a, "classes": [0] * 10**6}]}).encode(),
                            "class 0 is listed twice"),
    "seconds NaN": (lambda a: b'{"round": 1, "answers": [{"order": 0, "classes": [0], "seconds": NaN}]}',
                    "NaN is not a JSON number"),
    "seconds Infinity": (lambda a: b'{"round": 1, "answers": [{"order": 0, "classes": [0], "seconds": Infinity}]}',
                         "Infinity is not a JSON number"),
    "click_seconds NaN": (lambda a: b'{"round": 1, "answers": [{"order": 0, "classes": [0], '
                                    b'"click_seconds": [NaN, -5]}]}', "NaN is not a JSON number"),
    "click_seconds negative": (lambda a: json.dumps({"round": 1, "answers": [{**a, "click_seconds": [1.0, -5]}]})
                               .encode(), "answers[0].click_seconds[1]: expected a finite, non-negative"),
    "unknown answer key": (lambda a: json.dumps({"round": 1, "answers": [{**a, "clases": [1]}]}).encode(),
                           "answers[0]: unknown key 'clases'"),
    "unknown 50 MB key": (lambda a: json.dumps({"round": 1, "answers": [a], "x": "y" * (50 * 2**20)}).encode(),
                          "an answers file may have at most 16777216 bytes (16 MiB)"),
    "unknown file key": (lambda a: json.dumps({"round": 1, "answers": [a], "notes": "n"}).encode(),
                         "FILE: unknown key 'notes'"),
    "a directory": (None, "is a directory"),
}


@pytest.mark.parametrize("case", list(_BAD_FILES))
def test_import_refuses_a_bad_file_with_a_message(run, tmp_path, capsys, case):
    make, words = _BAD_FILES[case]
    f = tmp_path / "answers.json"
    if make is None:
        f.mkdir()
    else:
        f.write_bytes(make(_good_answer(run)))
    assert label_main(["import", str(run), str(f)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err[:2000]
    assert _files(run) == []


def test_page_refuses_non_finite_times(run):
    c, _ = _client(run)
    q = c.post("/api/next", json={"client": A}).get_json()
    r = c.post("/api/answer", data='{"client": "%s", "round": 1, "order": %d, "classes": [0], "seconds": NaN}'
               % (A, q["order"]), content_type="application/json")
    assert r.status_code == 400 and "seconds: expected a finite" in r.get_json()["error"]
    assert _files(run) == []


def test_undo_racing_another_servers_answer_names_the_winner(run):
    # two servers on one run: leases are per server, answers are files shared by both
    c1, _ = _client(run)
    c2, _ = _client(run)
    assert c1.post("/api/next", json={"client": A}).get_json()["order"] == 0
    assert c1.post("/api/answer", json={"client": A, "round": 1, "order": 0, "classes": [1]}).status_code == 200
    assert c1.post("/api/undo", json={"client": A, "round": 1}).status_code == 200
    assert c2.post("/api/next", json={"client": B}).get_json()["order"] == 0
    assert c2.post("/api/answer", json={"client": B, "round": 1, "order": 0, "classes": [2],
                                        "annotator": "bob"}).status_code == 200
    r = c1.post("/api/answer", json={"client": A, "round": 1, "order": 0, "classes": [3]})
    err = r.get_json()["error"]
    assert r.status_code == 409 and "answered in another browser (annotator 'bob')" in err and "first answer" in err
    assert json.loads((run / "answers" / "round_01" / "q_00000.json").read_text())["classes"] == [2]
