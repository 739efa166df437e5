"""A run's ``manifest.json``: one typed model, written and read here only.

``generate`` and ``refilter`` build a :class:`Manifest` and write it with
:func:`write_manifest` (atomically: the manifest is the commit record of the
shards). A manifest is also data from disk, possibly from someone else's machine: every
command that reads one goes through :func:`read_manifest`, which checks its
shape (pydantic) and turns any mistake into one line naming the file and the
field. Paths recorded in a manifest are never followed as they are:

* shard paths must be relative and stay inside the run directory
  (:func:`shard_path`), and a shard is read only if its sha256 matches the
  manifest's;
* template and seed paths point outside the run (where ``generate`` ran); they
  are used only when the files found there have the sha256 the manifest
  records for them (see ``prompts.PromptBuilder`` and ``run.refilter``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "selfinstruct-shards/1"


class ManifestError(ValueError):
    """A manifest that cannot be used; the message is one line naming the file and field."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ShardEntry(_Lenient):
    """One ``files[]`` entry: a shard path relative to the run, its rows and sha256."""

    path: str
    rows: int | None = None
    sha256: str | None = None


class SeedsRecord(_Lenient):
    """``seeds``: where the seed tasks were read, and each seed file's sha256."""

    path: str | None = None
    tasks: int | None = None
    files: list[dict[str, Any]] = []


class Identity(_Lenient):
    """``identity``: what makes two invocations the same run (see ``run.GenerateJob``)."""

    settings: dict[str, Any] = {}
    model: dict[str, Any] = {}
    seeds_sha256: list[str] = []
    prompts_sha256: dict[str, str] = {}
    judge: dict[str, Any] | None = None


class ModelRecord(_Lenient):
    """``model``: the model as the run named it, where it came from, the GGUF's sha256."""

    name: str | None = None
    path: str | None = None
    source: str | None = None
    gguf_sha256: str | None = None


class Manifest(_Lenient):
    """``manifest.json``, field by field, in the order it is written.

    Reading is lenient where it can be (a field a reader does not rely on may be
    missing, and unknown fields are kept as they are), so manifests of other
    selfinstruct versions load; writing always sets every field but
    ``refiltered_from``.

    Attributes:
        format: :data:`MANIFEST_FORMAT`.
        status: "running" (written when the run starts and after each round) or
            "complete".
        created, updated: ISO 8601 UTC times.
        files: the shards (the commit record: a shard not listed is not part of
            the run).
        rows, rows_pending: rows in the listed shards; rows committed to the
            ledger but not yet in a shard.
        tasks, rounds: tasks written, rounds committed.
        ledger: the ledger's directory name inside the run.
        identity: what a resumed run must share (settings, model, seeds, templates).
        model, seeds, prompts, config, versions: how the run was made.
        stats: the run's counts (:meth:`selfinstruct.stats.RunStats.to_json_dict`).
        engine_startup_seconds, backend, throughput: the engine of this process.
        refiltered_from: the source run of a ``refilter``.
    """

    format: str
    status: str | None = None
    created: str | None = None
    updated: str | None = None
    files: list[ShardEntry] = []
    rows: int | None = None
    rows_pending: int | None = None
    tasks: int = 0
    rounds: int = 0
    ledger: str | None = None
    identity: Identity | None = None
    model: ModelRecord | None = None
    seeds: SeedsRecord | None = None
    prompts: str | None = None
    config: dict[str, Any] | None = None
    versions: dict[str, str] | None = None
    stats: dict[str, Any] = {}
    engine_startup_seconds: float | None = None
    backend: dict[str, Any] | None = None
    throughput: dict[str, Any] | None = None
    refiltered_from: str | None = None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest`` as ``directory/manifest.json``, atomically (indented UTF-8 JSON).

    Fields never set (``refiltered_from`` of a ``generate`` run) are left out.
    """
    from .files import write_json

    write_json(directory / MANIFEST, manifest.model_dump(mode="json", exclude_unset=True))


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def read_manifest(path: Path, require: tuple[str, ...] = ()) -> tuple[dict[str, Any], Manifest]:
    """Read and check ``path`` (a ``manifest.json``).

    Args:
        path: the manifest file.
        require: top-level fields that must be present and not null for the
            caller (e.g. ``("identity", "config", "seeds")`` to resume or refilter).

    Returns:
        ``(data, manifest)``: the JSON object as read, and its checked model.

    Raises:
        ManifestError: unreadable, not JSON (with the line), nested too deeply,
            not an object, not of format :data:`MANIFEST_FORMAT`, a field of the
            wrong type, or a required field missing.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise ManifestError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object, found {type(data).__name__}")
    if data.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{path}: field 'format': not a manifest of this selfinstruct "
                            f"version (expected {MANIFEST_FORMAT!r})")
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ManifestError(f"{path}: field '{_field(first['loc'])}': {first['msg']}") from None
    for name in require:
        if getattr(manifest, name) is None:
            raise ManifestError(f"{path}: field '{name}': missing")
    return data, manifest


def shard_path(run_dir: Path, entry: ShardEntry, manifest_path: Path, index: int) -> Path:
    """The file of a manifest's shard entry, kept inside ``run_dir``.

    Raises:
        ManifestError: the path is absolute, climbs out of the run directory
            (``..`` or a symbolic link pointing elsewhere), or names no regular file.
    """
    relative = Path(entry.path)
    where = f"{manifest_path}: field 'files[{index}].path'"
    if relative.is_absolute() or ".." in relative.parts:
        raise ManifestError(f"{where}: {entry.path!r} is not a path inside the run directory")
    shard = run_dir / relative
    root = run_dir.resolve()
    resolved = shard.resolve()
    if root not in resolved.parents:
        raise ManifestError(f"{where}: {entry.path!r} leads outside the run directory")
    if not resolved.is_file():
        raise ManifestError(f"{shard}: listed in {MANIFEST} but missing or not a regular file")
    return shard
