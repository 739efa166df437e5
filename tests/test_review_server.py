"""The review server's API (selfinstruct/review/server.py) through Starlette's
TestClient: the session's shape, the judge hidden until all three answers are in,
every bad PUT answered with {"error": ...} and nothing written, foreign Host headers
refused, the page and its files served with the security headers, and no external
URL in the page's files."""

from __future__ import annotations

import html.parser
import json
import re
import shutil
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from selfinstruct.analysis.loading import load_run
from selfinstruct.analysis.quality import scale_of
from selfinstruct.quality import QUESTIONS, SCORES
from selfinstruct.review import REVIEW_QUESTIONS
from selfinstruct.review.labels import LabelStore, read_label_file
from selfinstruct.review.sample import open_sample
from selfinstruct.review.server import (
    BODY_LIMIT, SECURITY_HEADERS, ReviewSession, build_app, session_examples, static_dir)
from tests.small_run import write_small_run
from tests.test_inspect_quality import JUDGE, write_judged_run

LOOPBACK = "http://127.0.0.1"


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory) -> Path:
    return write_judged_run(tmp_path_factory.mktemp("judged"))


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    return write_small_run(tmp_path_factory.mktemp("plain"))


def session_for(run_dir: Path, size: int | None = None) -> ReviewSession:
    """A session built as the `review` command builds it."""
    run = load_run(run_dir)
    sample, positions, _ = open_sample(run_dir, run.frame, size, None, None)
    store = LabelStore(run_dir, "tester").open()
    return ReviewSession(run_dir.name, session_examples(
        run.frame, positions, [e.key for e in sample.examples],
        [e.stratum for e in sample.examples]), store, scale=scale_of(run)[0])


class Review:
    """A private copy of a run, its session and a client of its app."""

    def __init__(self, source: Path, tmp_path: Path, size: int | None = None):
        self.run = tmp_path / "run"
        shutil.copytree(source, self.run)
        self.session = session_for(self.run, size)
        self.client = TestClient(build_app(self.session), base_url=LOOPBACK)
        self.ids = [e["id"] for e in self.session.examples]

    @property
    def labels(self) -> Path:
        return self.session.store.path

    def put(self, example_id: str, body: object):
        return self.client.put(f"/api/labels/{example_id}", json=body)


@pytest.fixture
def judged(judged_run, tmp_path):
    review = Review(judged_run, tmp_path)
    yield review
    review.session.store.close()


@pytest.fixture
def plain(plain_run, tmp_path):
    review = Review(plain_run, tmp_path, size=4)
    yield review
    review.session.store.close()


def test_the_session_describes_the_run_reviewer_questions_and_sample(judged):
    response = judged.client.get("/api/session")
    assert response.status_code == 200
    data = response.json()
    assert set(data) == {"run", "reviewer", "labels_file", "questions", "size", "answered",
                         "judged", "scale", "first_open", "examples"}
    assert (data["run"], data["reviewer"]) == ("run", "tester")
    assert data["labels_file"] == str(judged.run / "review" / "labels-tester.parquet")
    assert data["questions"] == [{"name": q, "text": REVIEW_QUESTIONS[q]} for q in QUESTIONS]
    assert (data["size"], data["answered"], data["judged"], data["scale"]) == (6, 0, True, [1, 5])
    assert data["first_open"] == 0
    assert data["examples"] == [{"id": i, "complete": False} for i in judged.ids]
    rows = set(load_run(judged.run).frame["id"])
    assert set(judged.ids) == rows  # the sample is every row (6 < 200), in sample order

    judged.put(judged.ids[0], {"instruction": True, "input": True, "output": True})
    judged.put(judged.ids[1], {"instruction": True})
    data = judged.client.get("/api/session").json()
    assert data["answered"] == 1 and data["first_open"] == 1
    assert [e["complete"] for e in data["examples"]] == [True] + [False] * 5


def test_the_session_of_a_finished_review_has_no_open_example(plain):
    for example_id in plain.ids:
        assert plain.put(example_id, {"instruction": True, "input": False,
                                      "output": True}).status_code == 200
    data = plain.client.get("/api/session").json()
    assert (data["size"], data["answered"], data["first_open"], data["judged"]) == (4, 4, None,
                                                                                    False)


def test_an_example_shows_its_row_and_hides_the_judge_until_all_three_answers(judged):
    frame = load_run(judged.run).frame.set_index("id")
    example_id = judged.ids[2]
    data = judged.client.get(f"/api/examples/{example_id}").json()
    row = frame.loc[example_id]
    assert (data["id"], data["position"], data["label"], data["judge"]) == (
        example_id, 2, None, None)
    assert (data["instruction"], data["input"], data["output"]) == (
        row["instruction"], row["input"], row["output"])
    assert data["round"] == row["round"] and data["task_id"] == row["task_id"]

    for body in ({"instruction": True}, {"instruction": True, "input": False},
                 {"instruction": True, "output": False, "note": "no input"}):
        put = judged.put(example_id, body)
        assert put.status_code == 200 and put.json()["judge"] is None
        assert put.json()["label"]["complete"] is False
        assert judged.client.get(f"/api/examples/{example_id}").json()["judge"] is None

    put = judged.put(example_id, {"instruction": True, "input": False, "output": False})
    assert put.status_code == 200 and put.json()["answered"] == 1
    shown = judged.client.get(f"/api/examples/{example_id}").json()
    assert shown["label"]["complete"] is True and shown["label"]["input"] is False
    for verdict in (put.json()["judge"], shown["judge"]):
        assert verdict is not None and verdict["judge"] == JUDGE
        assert set(verdict["scores"]) == set(SCORES)
        for score in SCORES:
            value = row[f"quality_{score}"]
            assert verdict["scores"][score] == (None if value != value else value)
        assert set(verdict["rationales"]) == set(QUESTIONS)
    # taking an answer back hides the verdict again
    again = judged.put(example_id, {"instruction": True, "input": None, "output": False})
    assert again.json()["judge"] is None


def test_an_unreadable_verdict_is_shown_as_null_scores_and_its_reason(judged):
    frame = load_run(judged.run).frame.set_index("id")
    example_id = next(i for i in judged.ids if frame.loc[i, "output"] == "negative"
                      and frame.loc[i, "input"] == "Cold soup.")
    put = judged.put(example_id, {"instruction": True, "input": True, "output": False})
    assert put.status_code == 200
    verdict = judged.client.get(f"/api/examples/{example_id}").json()["judge"]
    assert verdict["scores"] == dict.fromkeys(SCORES)
    assert verdict["reason"] == "judge_unparseable"
    assert verdict["rationales"] == dict.fromkeys(QUESTIONS, "")


def test_an_unjudged_run_never_shows_a_verdict(plain):
    put = plain.put(plain.ids[0], {"instruction": True, "input": True, "output": True})
    assert put.status_code == 200 and put.json()["judge"] is None
    assert plain.client.get(f"/api/examples/{plain.ids[0]}").json()["judge"] is None


def test_answers_are_in_the_labels_file_when_the_reply_comes(judged):
    put = judged.put(judged.ids[0], {"instruction": False, "input": None, "output": True,
                                     "note": "not a task"})
    assert put.status_code == 200
    rows = read_label_file(judged.labels).to_dict("records")
    example = judged.session.examples[0]
    assert len(rows) == 1 and rows[0]["example_key"] == example["key"]
    assert (rows[0]["example_id"], rows[0]["instruction"], rows[0]["output"], rows[0]["note"]
            ) == (judged.ids[0], False, True, "not a task")


BAD_PUTS = {
    "unknown id": (404, lambda c, i: c.put("/api/labels/no-such-id",
                                           json={"instruction": True})),
    "not json": (400, lambda c, i: c.put(f"/api/labels/{i}", content=b"{instruction: yes",
                                         headers={"content-type": "application/json"})),
    "empty body": (400, lambda c, i: c.put(f"/api/labels/{i}", content=b"",
                                           headers={"content-type": "application/json"})),
    "wrong type": (422, lambda c, i: c.put(f"/api/labels/{i}", json={"instruction": "yes"})),
    "number for bool": (422, lambda c, i: c.put(f"/api/labels/{i}", json={"output": 1})),
    "unknown field": (422, lambda c, i: c.put(f"/api/labels/{i}", json={"verdict": True})),
    "not an object": (422, lambda c, i: c.put(f"/api/labels/{i}", json=[True, True, True])),
    "note too long": (422, lambda c, i: c.put(f"/api/labels/{i}", json={"note": "x" * 4001})),
    "text/plain": (415, lambda c, i: c.put(f"/api/labels/{i}",
                                           content=json.dumps({"instruction": True}),
                                           headers={"content-type": "text/plain"})),
    "no content type": (415, lambda c, i: c.put(f"/api/labels/{i}",
                                                content=b'{"instruction": true}')),
    "too large": (413, lambda c, i: c.put(f"/api/labels/{i}",
                                          json={"note": "x" * (BODY_LIMIT + 10)})),
    "post": (405, lambda c, i: c.post(f"/api/labels/{i}", json={"instruction": True})),
}


@pytest.mark.parametrize("answered_before", [False, True])
@pytest.mark.parametrize("kind", list(BAD_PUTS))
def test_a_bad_put_is_an_error_and_writes_nothing(judged, kind, answered_before):
    status, send = BAD_PUTS[kind]
    target = judged.ids[1]
    before = None
    if answered_before:
        assert judged.put(target, {"instruction": True}).status_code == 200
        before = judged.labels.read_bytes()
    response = send(judged.client, target)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()
    assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]
    if before is None:
        assert not judged.labels.exists()
    else:
        assert judged.labels.read_bytes() == before
    label = judged.session.store.get(judged.session.examples[1]["key"])
    assert (label is None) == (not answered_before)
    if label is not None:
        assert label.answers.instruction is True and label.answers.output is None


def test_errors_name_the_field_or_the_id(judged):
    response = judged.put("no-such-id", {"instruction": True})
    assert "'no-such-id'" in response.json()["error"]
    response = judged.put(judged.ids[0], {"instruction": "yes"})
    assert "field 'instruction'" in response.json()["error"]
    response = judged.put(judged.ids[0], {"verdict": True})
    assert "field 'verdict'" in response.json()["error"]
    assert judged.client.get("/api/examples/nope").status_code == 404
    assert judged.client.get("/api/examples/nope").json() == {
        "error": "no sampled example with id 'nope'"}
    missing = judged.client.get("/no/such/page")
    assert missing.status_code == 404 and set(missing.json()) == {"error"}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_a_foreign_host_header_is_refused(judged, host):
    client = TestClient(build_app(judged.session), base_url=f"http://{host}")
    assert client.get("/api/session").status_code == 400
    assert client.get("/").status_code == 400
    assert client.put(f"/api/labels/{judged.ids[0]}",
                      json={"instruction": True}).status_code == 400
    assert not judged.labels.exists()
    assert judged.session.store.get(judged.session.examples[0]["key"]) is None


@pytest.mark.parametrize("host", ["127.0.0.1:8123", "localhost:8123", "[::1]:8123"])
def test_loopback_host_headers_with_a_port_are_served(judged, host):
    response = judged.client.get("/api/session", headers={"host": host})
    assert response.status_code == 200


def test_a_server_for_any_host_serves_any_host(judged):
    client = TestClient(build_app(judged.session, ["*"]), base_url="http://review.lan:9000")
    assert client.get("/api/session").status_code == 200


CSP = SECURITY_HEADERS["Content-Security-Policy"]


@pytest.mark.parametrize("path, kind", [
    ("/", "text/html"), ("/static/review.js", "text/javascript"),
    ("/static/review.css", "text/css"), ("/static/index.html", "text/html"),
])
def test_the_page_and_its_files_are_served_with_the_security_headers(judged, path, kind):
    response = judged.client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    assert response.headers["content-security-policy"] == CSP
    assert "default-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/api/session", "/api/examples/nope", "/static/nope.js"])
def test_api_answers_and_errors_carry_the_security_headers(judged, path):
    response = judged.client.get(path)
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["cache-control"] == "no-store"


def test_the_page_is_the_packaged_index(judged):
    assert judged.client.get("/").text == (static_dir() / "index.html").read_text()


class References(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found += [v for k, v in attrs if k in ("src", "href", "action") and v]


def test_the_page_loads_nothing_from_the_network():
    files = sorted(static_dir().iterdir())
    assert {f.name for f in files} >= {"index.html", "review.js", "review.css"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text, re.IGNORECASE), path
        assert "//cdn" not in text and "@import" not in text, path
    page = References()
    page.feed((static_dir() / "index.html").read_text(encoding="utf-8"))
    assert "/static/review.js" in page.found and "/static/review.css" in page.found
    for ref in page.found:  # own files (or an inline data: icon), never another origin
        assert ref.startswith(("/static/", "data:")) and not ref.startswith("//"), ref


def test_every_file_the_page_references_is_served(judged):
    page = References()
    page.feed(judged.client.get("/").text)
    for ref in page.found:
        if ref.startswith("/"):
            assert judged.client.get(ref).status_code == 200, ref
