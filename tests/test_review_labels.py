"""Review labels (selfinstruct/review/labels.py): answers kept per reviewer in
review/labels-<reviewer>.parquet, rewritten atomically on every put, read back on
reopening, one writer per reviewer (flock), damaged files refused and left as they
are, and invalid_keys taking the examples some reviewer said "no" to."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from selfinstruct.review import ReviewError
from selfinstruct.review.labels import (
    LABEL_SCHEMA, NOTE_LIMIT, Answers, LabelStore, check_reviewer, invalid_keys, labels_path,
    load_labels, read_label_file)
from selfinstruct.storage import files


@pytest.fixture
def store(tmp_path):
    opened = LabelStore(tmp_path, "alice").open()
    yield opened
    opened.close()


def review_files(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "review").iterdir())


def test_put_then_get_round_trips_the_answers(tmp_path, store):
    assert store.get("k1") is None
    answers = Answers(instruction=True, input=False, output=None, note="odd input")
    label = store.put("r0001-0000-0", "k1", answers)
    assert store.get("k1") == label
    assert (label.example_id, label.example_key, label.answers) == ("r0001-0000-0", "k1", answers)
    assert label.updated_at.tzinfo is not None
    data = label.as_json()
    assert {k: data[k] for k in ("instruction", "input", "output", "note", "complete")} == {
        "instruction": True, "input": False, "output": None, "note": "odd input",
        "complete": False}
    assert store.put("r0001-0000-0", "k1", Answers(instruction=True, input=True, output=False)
                     ).as_json()["complete"] is True
    frame = read_label_file(labels_path(tmp_path, "alice"))
    assert frame.to_dict("records")[0] | {"updated_at": None} == {
        "reviewer": "alice", "example_id": "r0001-0000-0", "example_key": "k1",
        "instruction": True, "input": True, "output": False, "note": "", "updated_at": None}


def test_every_put_rewrites_the_file_by_rename_and_leaves_no_temporary_file(tmp_path, store):
    path = labels_path(tmp_path, "alice")
    assert path == tmp_path / "review" / "labels-alice.parquet" and not path.exists()
    store.put("a", "k1", Answers(instruction=True))
    first = path.stat().st_ino
    store.put("b", "k2", Answers(instruction=False))
    assert path.stat().st_ino != first  # a new file renamed over the old one
    assert review_files(tmp_path) == ["labels-alice.lock", "labels-alice.parquet"]
    assert len(read_label_file(path)) == 2


def test_a_failed_write_keeps_the_previous_file_and_answers(tmp_path, store, monkeypatch):
    path = labels_path(tmp_path, "alice")
    kept = store.put("a", "k1", Answers(instruction=True))
    before = path.read_bytes()

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fail)
    with pytest.raises(OSError, match="No space"):
        store.put("a", "k1", Answers(instruction=False))
    with pytest.raises(OSError):
        store.put("b", "k2", Answers(output=True))
    assert path.read_bytes() == before
    assert review_files(tmp_path) == ["labels-alice.lock", "labels-alice.parquet"]
    assert store.get("k1") == kept and store.get("k2") is None


def test_reopening_reads_the_answers_back(tmp_path, store):
    store.put("a", "k1", Answers(instruction=True, input=True, output=True, note="fine"))
    store.put("b", "k2", Answers(instruction=False, input=None, output=None))
    store.put("a", "k1", Answers(instruction=True, input=True, output=False, note="wrong sum"))
    written = dict(store.labels)
    store.close()
    again = LabelStore(tmp_path, "alice").open()
    try:
        assert set(again.labels) == {"k1", "k2"}
        for key, label in written.items():
            back = again.get(key)
            assert back is not None
            assert (back.example_id, back.answers) == (label.example_id, label.answers)
            # stored to the millisecond
            assert abs((back.updated_at - label.updated_at).total_seconds()) < 0.001
        assert again.get("k1").answers.note == "wrong sum"
    finally:
        again.close()


def test_a_second_store_for_the_same_reviewer_is_refused_in_this_process(tmp_path, store):
    with pytest.raises(ReviewError) as error:
        LabelStore(tmp_path, "alice").open()
    message = str(error.value)
    assert str(labels_path(tmp_path, "alice")) in message and "already reviewing" in message
    assert f"pid {os.getpid()}" in message and "\n" not in message
    other = LabelStore(tmp_path, "bob").open()  # another reviewer is fine
    other.put("a", "k1", Answers(output=False))
    other.close()
    store.put("a", "k1", Answers(output=True))  # the holder still writes
    store.close()
    reopened = LabelStore(tmp_path, "alice").open()  # and once closed it is free
    reopened.close()


HOLD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from selfinstruct.review.labels import LabelStore
    store = LabelStore(Path(sys.argv[1]), sys.argv[2]).open()
    print("holding", flush=True)
    sys.stdin.readline()
    store.close()
""")


def test_a_store_held_by_another_process_is_refused_naming_its_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "alice"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(ReviewError, match=f"pid {holder.pid}"):
            LabelStore(tmp_path, "alice").open()
        LabelStore(tmp_path, "bob").open().close()
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    LabelStore(tmp_path, "alice").open().close()  # released when that process let go


def test_another_process_is_refused_while_this_one_holds_the_store(tmp_path, store):
    probe = textwrap.dedent("""
        import sys
        from pathlib import Path
        from selfinstruct.review import ReviewError
        from selfinstruct.review.labels import LabelStore
        try:
            LabelStore(Path(sys.argv[1]), "alice").open()
        except ReviewError as exc:
            print("REFUSED", exc)
        else:
            print("OPENED")
    """)
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.startswith("REFUSED"), result.stdout + result.stderr
    assert f"pid {os.getpid()}" in result.stdout


def write_table(path: Path, columns: dict, schema: pa.Schema | None = None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path.read_bytes()


def good_columns(**change) -> dict:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    columns = {"reviewer": ["alice"], "example_id": ["a"], "example_key": ["k1"],
               "instruction": [True], "input": [None], "output": [False], "note": [""],
               "updated_at": pa.array([now], pa.timestamp("ms", tz="UTC"))}
    columns.update(change)
    return {k: v for k, v in columns.items() if v is not None}


CORRUPT = {
    "garbage": (lambda p: p.write_bytes(b"PAR1\x00\x01 not parquet at all \xff"),
                "not a readable labels file"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable labels file"),
    "missing column": (lambda p: write_table(p, good_columns(note=None)),
                       "field 'note': missing column"),
    "wrong type": (lambda p: write_table(p, good_columns(instruction=["yes"])),
                   "field 'instruction': type string, expected bool"),
    "wrong time type": (lambda p: write_table(p, good_columns(
                            updated_at=pa.array([1], pa.int64()))),
                        "field 'updated_at': type int64"),
    "repeated key": (lambda p: write_table(p, {k: v * 2 if isinstance(v, list) else
                                               pa.concat_arrays([v, v])
                                               for k, v in good_columns().items()}),
                     "field 'example_key': k1 appears twice"),
}


@pytest.mark.parametrize("kind", list(CORRUPT))
def test_a_corrupt_labels_file_is_refused_naming_it_and_left_unchanged(tmp_path, kind):
    path = labels_path(tmp_path, "alice")
    path.parent.mkdir(parents=True)
    make, expected = CORRUPT[kind]
    make(path)
    before = path.read_bytes()
    for call in (lambda: read_label_file(path), lambda: load_labels(tmp_path),
                 lambda: invalid_keys(tmp_path), lambda: LabelStore(tmp_path, "alice").open()):
        with pytest.raises(ReviewError) as error:
            call()
        message = str(error.value)
        assert message.startswith(f"{path}: ") and expected in message, message
        assert "\n" not in message
    assert path.read_bytes() == before
    # the refused open let go of the lock: once the file is moved away, it opens
    path.rename(tmp_path / "moved.parquet")
    LabelStore(tmp_path, "alice").open().close()


def test_a_well_formed_foreign_labels_file_is_read(tmp_path):
    path = labels_path(tmp_path, "alice")
    write_table(path, good_columns(), LABEL_SCHEMA)
    store = LabelStore(tmp_path, "alice").open()
    try:
        label = store.get("k1")
        assert label is not None
        assert label.answers == Answers(instruction=True, input=None, output=False)
    finally:
        store.close()


def test_invalid_keys_are_those_with_a_no_from_any_reviewer(tmp_path):
    alice = LabelStore(tmp_path, "alice").open()
    alice.put("1", "all-yes", Answers(instruction=True, input=True, output=True))
    alice.put("2", "output-no", Answers(instruction=True, input=True, output=False))
    alice.put("3", "unanswered", Answers(instruction=None, input=True, output=None))
    alice.put("4", "bob-says-no", Answers(instruction=True, input=True, output=True))
    alice.put("5", "instruction-no", Answers(instruction=False))
    alice.close()
    bob = LabelStore(tmp_path, "bob").open()
    bob.put("4", "bob-says-no", Answers(instruction=True, input=False, output=True))
    bob.put("1", "all-yes", Answers(instruction=True, input=True, output=True))
    bob.close()
    assert invalid_keys(tmp_path) == {"output-no", "bob-says-no", "instruction-no"}
    labels = load_labels(tmp_path)
    assert sorted(labels["reviewer"].unique()) == ["alice", "bob"] and len(labels) == 7


def test_no_labels_means_no_invalid_keys_and_an_empty_frame(tmp_path):
    assert invalid_keys(tmp_path) == set()
    assert list(load_labels(tmp_path).columns) == LABEL_SCHEMA.names
    assert len(load_labels(tmp_path)) == 0


@pytest.mark.parametrize("name", ["", "a/b", "../etc", ".hidden", "-x", "a b", "x" * 65,
                                  "émile", "a\nb", "name\x1b[2J"])
def test_bad_reviewer_names_are_refused(tmp_path, name):
    with pytest.raises(ReviewError, match="--reviewer"):
        check_reviewer(name)
    with pytest.raises(ReviewError):
        LabelStore(tmp_path, name)
    assert not (tmp_path / "review").exists()


@pytest.mark.parametrize("name", ["alice", "A.b_c-9", "x" * 64, "7"])
def test_good_reviewer_names_are_accepted(name):
    assert check_reviewer(name) == name


@pytest.mark.parametrize("body", [
    {"instruction": "yes"}, {"input": 1}, {"output": None, "extra": True},
    {"note": "x" * (NOTE_LIMIT + 1)}, {"note": None},
])
def test_answers_are_strict(body):
    with pytest.raises(ValidationError):
        Answers.model_validate(body)


def test_a_labels_file_with_null_notes_opens_with_empty_notes(tmp_path):
    path = labels_path(tmp_path, "alice")
    write_table(path, good_columns(note=pa.array([None], pa.string())), LABEL_SCHEMA)
    store = LabelStore(tmp_path, "alice").open()
    try:
        label = store.get("k1")
        assert label is not None and label.answers.note == ""
        store.put("a", "k1", Answers(instruction=False))
    finally:
        store.close()
    assert read_label_file(path)["note"].tolist() == [""]
