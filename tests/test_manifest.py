"""The typed manifest (selfinstruct.storage.manifest): written and read by one model."""

from __future__ import annotations

import json

import pytest

from selfinstruct.storage.manifest import (MANIFEST, MANIFEST_FORMAT, Manifest, ManifestError,
                                           read_manifest, write_manifest)


def sample() -> Manifest:
    return Manifest.model_validate({
        "format": MANIFEST_FORMAT, "status": "complete", "files": [
            {"path": "data/shard-00000.parquet", "rows": 3, "sha256": "ab" * 32}],
        "rows": 3, "rows_pending": 0, "tasks": 2, "rounds": 1, "ledger": "ledger",
        "identity": {"settings": {"seed": 3}, "model": {"name": "m"}, "seeds_sha256": ["cd"],
                     "prompts_sha256": {"a.jinja": "ef"}},
        "model": {"name": "m", "path": "/models/m", "source": "local", "gguf_sha256": None},
        "stats": {"rounds": 1, "engine": {"useful_token_share": 0.5}},
    })


def test_written_manifest_reads_back_as_the_same_model(tmp_path):
    write_manifest(tmp_path, sample())
    data, manifest = read_manifest(tmp_path / MANIFEST)
    assert manifest == sample()
    assert list(data)[:3] == ["format", "status", "files"]  # field order as documented
    assert "refiltered_from" not in data and "created" not in data  # unset: left out
    assert manifest.model.path == "/models/m" and manifest.identity.seeds_sha256 == ["cd"]


def test_a_set_field_is_written_and_unknown_fields_of_other_versions_are_kept(tmp_path):
    manifest = sample()
    manifest.refiltered_from = "/runs/a"
    write_manifest(tmp_path, manifest)
    data = json.loads((tmp_path / MANIFEST).read_text())
    assert data["refiltered_from"] == "/runs/a"
    data["from_a_newer_version"] = {"x": 1}
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    _, checked = read_manifest(tmp_path / MANIFEST)
    write_manifest(tmp_path, checked)
    assert json.loads((tmp_path / MANIFEST).read_text())["from_a_newer_version"] == {"x": 1}


def test_a_field_of_the_wrong_type_is_one_line_naming_it(tmp_path):
    data = sample().model_dump(mode="json", exclude_unset=True)
    data["model"]["name"] = 7
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"field 'model\.name'") as err:
        read_manifest(tmp_path / MANIFEST)
    assert "\n" not in str(err.value)
