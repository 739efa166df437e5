"""Parquet shards: schema, sizes, atomic writes, and loading with `datasets`."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from selfinstruct.storage.shards import SCHEMA, ShardWriter, messages_for
from selfinstruct.storage.files import atomic_file


def row(k: int, input_text: str = "") -> dict:
    return {
        "id": f"r0001-{k:04d}-0", "task_id": f"r0001-{k:04d}", "instruction": f"Do thing {k}.",
        "input": input_text, "output": f"done {k}",
        "messages": messages_for(f"Do thing {k}.", input_text, f"done {k}"),
        "is_classification": False, "model": "m", "round": 1,
        "prompt_task_ids": ["a", "b"], "nearest_instruction": None, "nearest_rouge_l": None,
    }


def test_messages_join_instruction_and_input_with_a_blank_line():
    assert messages_for("Sum it.", "2, 3", "5") == [
        {"role": "user", "content": "Sum it.\n\n2, 3"}, {"role": "assistant", "content": "5"}]
    assert messages_for("Name a color.", "", "Red")[0]["content"] == "Name a color."


def test_writer_splits_into_shards_of_at_most_shard_size(tmp_path):
    writer = ShardWriter(tmp_path, shard_size=4)
    writer.add([row(k) for k in range(3)])
    assert writer.shards == []
    writer.add([row(k) for k in range(3, 10)])
    shards = writer.close()
    assert [s.rows for s in shards] == [4, 4, 2]
    for shard in shards:
        assert pq.read_schema(tmp_path / shard.path).equals(SCHEMA)
    assert not list(tmp_path.glob("data/.*"))  # no temporary files left


def test_shards_load_with_datasets(tmp_path):
    import datasets

    writer = ShardWriter(tmp_path, shard_size=3)
    writer.add([row(k, "in" if k % 2 else "") for k in range(5)])
    writer.close()
    data = datasets.load_dataset("parquet", data_files=str(tmp_path / "data" / "*.parquet"),
                                 split="train")
    assert data.num_rows == 5
    assert data[1]["messages"][0]["content"] == "Do thing 1.\n\nin"


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
