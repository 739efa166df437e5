"""The n-gram index over the evaluation sets, cached on disk by content hash.

Building the index normalizes every evaluation item; a second run against the
same evaluation sets reads it back instead. The file is named by a SHA-256 over
everything the index depends on (:func:`cache_key`), so a changed item, n,
minimum item length or normalization is a different file and a stale index is
never read. Files are numpy ``.npz`` archives of plain arrays, read with
``allow_pickle=False``, written atomically. A damaged file is rebuilt and
replaced; a cache that cannot be read or written costs a rebuild in memory and a
warning, never an error.

Where: ``$SELFINSTRUCT_CACHE/decontamination/`` (default
``$XDG_CACHE_HOME/selfinstruct`` or ``~/.cache/selfinstruct``, as for converted
models, :func:`selfinstruct.models.cache_dir`).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from ..models import cache_dir as selfinstruct_cache_dir
from ..storage.files import write_atomic
from . import DEFAULT_NGRAM, MIN_ITEM_TOKENS
from .ngrams import NORMALIZATION_VERSION, NgramIndex

FORMAT_VERSION = 1
"""Layout of the cached arrays; bumped when :meth:`NgramIndex.to_arrays` changes."""

log = logging.getLogger("selfinstruct.decontamination")


def default_cache_dir() -> Path:
    """``decontamination/`` under selfinstruct's cache root (``$SELFINSTRUCT_CACHE``,
    else ``$XDG_CACHE_HOME/selfinstruct``, else ``~/.cache/selfinstruct``)."""
    return selfinstruct_cache_dir() / "decontamination"


def cache_key(items: Sequence[str], n: int, min_item_tokens: int) -> str:
    """Hex SHA-256 naming the index of ``items``: over the format version, ``n``,
    ``min_item_tokens``, :data:`NORMALIZATION_VERSION` and every item text in
    order (each prefixed with its length, so no two lists of items share a key)."""
    digest = hashlib.sha256()
    digest.update(f"selfinstruct ngram index {FORMAT_VERSION}\0{n}\0{min_item_tokens}\0"
                  f"{NORMALIZATION_VERSION}\0{len(items)}\0".encode())
    for text in items:
        data = text.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cache_path(directory: Path, key: str) -> Path:
    """The file of the index named ``key`` in ``directory``."""
    return directory / f"ngrams-{key}.npz"


def load_or_build(items: Sequence[str], n: int = DEFAULT_NGRAM,
                  min_item_tokens: int = MIN_ITEM_TOKENS, groups: Sequence[int] | None = None,
                  cache_dir: Path | str | None = None, *,
                  on_warning: Callable[[str], None] | None = None) -> tuple[NgramIndex, bool]:
    """The :class:`NgramIndex` of ``items``, read from the cache or built and stored there.

    Args:
        items, n, min_item_tokens, groups: as :meth:`NgramIndex.build`. ``groups``
            is not part of the cached file (nor of its key): it is set on the
            index after it is read.
        cache_dir: the directory of the cache files; None: :func:`default_cache_dir`.
        on_warning: called with a one-line message when a cache file is damaged
            (it is rebuilt and replaced) or the directory cannot be read or
            written (the index is built in memory); None: logged as a warning on
            the ``selfinstruct.decontamination`` logger.

    Returns:
        ``(index, hit)``: ``hit`` is True when the index was read from the cache.

    Raises:
        DecontaminationError: ``n`` or ``min_item_tokens`` below 1.
        ValueError: ``groups`` does not have one non-negative int per item.
    """
    warn = on_warning or log.warning
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(items, n, min_item_tokens)
    path = cache_path(directory, key)
    if path.exists():
        try:
            index = _read(path, key)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            warn(f"{path}: damaged n-gram cache file ({_reason(exc)}); rebuilding it")
        else:
            return index.with_groups(groups), True
    index = NgramIndex.build(items, n, min_item_tokens, groups)
    try:
        write_atomic(path, lambda handle: _write(handle, key, index))
    except OSError as exc:
        warn(f"{directory}: cannot write the n-gram cache ({_reason(exc)}); "
             "the index is kept in memory only")
    return index, False


def _write(handle: IO[bytes], key: str, index: NgramIndex) -> None:
    arrays = {"format": np.array(FORMAT_VERSION, dtype=np.int64),
              "key": np.frombuffer(key.encode("ascii"), dtype=np.uint8), **index.to_arrays()}
    save: Callable[..., None] = np.savez  # its stub reads **arrays as the allow_pickle flag
    save(handle, allow_pickle=False, **arrays)


def _read(path: Path, key: str) -> NgramIndex:
    """The index stored in ``path`` under ``key``.

    Raises:
        OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile: the file
            cannot be read, is not an archive of this format and key, or its
            arrays do not fit together.
    """
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if int(arrays.pop("format")) != FORMAT_VERSION:
        raise ValueError("another format version")
    if bytes(arrays.pop("key")) != key.encode("ascii"):
        raise ValueError("another key")
    return NgramIndex.from_arrays(arrays)


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
