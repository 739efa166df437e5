"""The embedding check: cosine similarity of embeddings, for users with a local model.

Optional and off by default (``methods`` without ``embedding``): n-grams and
ROUGE-L need no model, and an embedding model finds a paraphrase that shares
few words with the evaluation item, the case Yang et al. 2023 ("Rethinking
Benchmark and Contamination for Language Models with Rephrased Samples") show
both word-level checks miss.

How it works:

* every evaluation item is embedded once when the check is built, and the
  vectors are scaled to unit length: one ``float32`` matrix of shape
  ``(items, dim)`` per evaluation set;
* :meth:`EmbeddingCheck.match` embeds the texts asked about in batches of
  ``batch_size``, scales them the same way, and takes the cosine similarity of
  every text with every item of a set as one matrix product (numpy); per set
  the item with the highest similarity is the candidate, flagged when its
  similarity is **at or above** ``embedding_threshold`` (inclusive, less
  :data:`ROUNDING` for float32 rounding, so a threshold of 1.0 still flags an
  exact repeat).

The model is anything with ``embed(texts: list[str]) -> array (len(texts), dim)``
(:class:`Embedder`), so another backend or a test can bring its own; without
one the check starts :class:`VLLMEmbedder` on ``embedding_model``: a local
directory, or a Hugging Face id already in the local Hugging Face cache.
Nothing is downloaded at run time (as for the evaluation sets).

Texts longer than the model's context are truncated to it (their first tokens
are embedded), not refused. Empty (or whitespace-only) texts and items are not
embedded: they match nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..config import DecontaminationConfig, VLLMDType
from ..models import ModelError, ResolvedModel, resolve_model
from . import DecontaminationError

OPTION = "[decontamination] embedding_model"
"""How errors name the setting (``--embedding-model`` on the command line)."""

DEFAULT_BATCH_SIZE = 512
"""Texts embedded per call of the model and compared per matrix product: the
similarity block is ``batch_size x items`` float32 (512 x 16,400 items = 34 MB)."""

Vectors = npt.NDArray[np.float32]
"""A ``(rows, dim)`` float32 matrix of embeddings."""

ROUNDING = 1e-6
"""Slack below the threshold for float32 rounding: the cosine of a text with an
identical item computes as 1.0 give or take a few 1e-8."""

Hit = tuple[int, int, float]
"""One flagged match: (benchmark index, item index in that benchmark, cosine)."""


class Embedder(Protocol):
    """What the check needs of an embedding model."""

    def embed(self, texts: list[str]) -> Any:
        """One vector per text: an array-like of shape ``(len(texts), dim)``, any
        scale (the check normalizes), the same ``dim`` on every call."""
        ...


class _Benchmark(Protocol):
    """What the check reads of an evaluation set (:class:`~.benchmarks.Benchmark`)."""

    @property
    def name(self) -> str: ...

    @property
    def texts(self) -> Sequence[str]: ...


def resolve_embedding_model(model: str | None) -> ResolvedModel:
    """Find the embedding model ``embedding_model`` names, without downloading anything.

    Args:
        model: a local model directory (with ``config.json``), or a Hugging Face
            id whose snapshot is already in the local Hugging Face cache
            (``HF_HUB_CACHE``; ``huggingface-cli download ID`` puts it there).

    Returns:
        the model, ``path`` always a local directory; ``source`` is
        ``"directory"`` or ``"hf-cache"`` (``name`` is then the id).

    Raises:
        DecontaminationError: (one line, naming the setting) no model given, a
            GGUF file (vLLM reads no GGUF embedding model; give the original
            checkpoint), a path that does not exist or has no ``config.json``,
            or an id that is not in the cache.
    """
    if model is None:
        raise DecontaminationError(f"{OPTION}: not set; the embedding method needs a local "
                                   "embedding model directory")
    if Path(model).expanduser().suffix.lower() == ".gguf":
        raise DecontaminationError(f"{OPTION}: {model}: a GGUF file cannot be an embedding "
                                   "model here; give the model's directory")
    try:
        resolved = resolve_model(model)
    except ModelError as exc:
        raise DecontaminationError(f"{OPTION}: {exc}") from None
    if resolved.source == "directory":
        return resolved
    snapshot = _cached_snapshot(model)
    if snapshot is None:
        raise DecontaminationError(
            f"{OPTION}: {model}: not a local directory and not in the Hugging Face cache "
            "(nothing is downloaded at run time: run `huggingface-cli download "
            f"{model}` first, or give the model's directory)")
    return ResolvedModel(path=str(snapshot), name=model, source="hf-cache")


def _cached_snapshot(repo_id: str) -> Path | None:
    """The local snapshot of ``repo_id`` in the Hugging Face cache, or None (no network)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, an invalid id, an unreadable cache: all "not there"
        return None
    return path if (path / "config.json").is_file() else None


def normalized(vectors: Any, rows: int, what: str) -> Vectors:
    """``vectors`` as float32 rows of unit length.

    Args:
        vectors: an embedder's output for ``rows`` texts.
        rows: how many rows it must have.
        what: names the texts in an error ("evaluation items", "texts").

    Returns:
        a ``(rows, dim)`` float32 matrix, each row divided by its L2 norm.

    Raises:
        EngineError: not a 2-D array of ``rows`` rows, or a row that is not
            finite or is all zeros (it has no direction).
    """
    from ..engines.base import EngineError

    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise EngineError(f"the embedding model returned no matrix for {what}: {exc}"
                          .splitlines()[0]) from None
    if matrix.ndim != 2 or matrix.shape[0] != rows or matrix.shape[1] == 0:
        raise EngineError(f"the embedding model returned shape {matrix.shape} for {rows} "
                          f"{what}; expected ({rows}, dim)")
    norms = np.linalg.norm(matrix, axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise EngineError(f"the embedding model returned a zero or non-finite vector for "
                          f"{int(bad.sum())} of {rows} {what}")
    result: Vectors = (matrix / norms[:, None]).astype(np.float32, copy=False)
    return result


class EmbeddingCheck:
    """Cosine similarity of texts to every evaluation item (see the module docstring).

    Build it with :meth:`build`; :meth:`match` is then a pure function of its
    input (for a deterministic model). Call :meth:`close` when done: it shuts
    down a model the check started itself (not one passed in).

    Attributes:
        names: the evaluation sets' names, in the order given.
        threshold: the cosine in [-1, 1] at or above which a match is flagged.
        batch_size: texts per embedding call and per similarity block.
        model_name: the model's name for provenance (``embedding_model``).
        dim: the embeddings' dimension.
        notes: remarks made while building (items not embedded).
    """

    def __init__(self, names: list[str], items: list[npt.NDArray[np.int64]],
                 vectors: list[Vectors], model: Embedder, threshold: float,
                 batch_size: int, model_name: str, dim: int, owned: bool = False,
                 notes: list[str] | None = None):
        self.names = names
        self._items = items
        self._vectors = vectors
        self._model: Embedder | None = model
        self.threshold = threshold
        self.batch_size = batch_size
        self.model_name = model_name
        self.dim = dim
        self._owned = owned
        self.notes = notes or []

    @classmethod
    def build(cls, benchmarks: Sequence[_Benchmark], config: DecontaminationConfig,
              model: Embedder | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE) -> EmbeddingCheck:
        """Embed every evaluation item once.

        Args:
            benchmarks: the evaluation sets (``.name``, ``.texts``), in
                ``--against`` order; :meth:`match` reports them by this index.
            config: ``embedding_threshold``; ``embedding_model`` when ``model``
                is None.
            model: an :class:`Embedder` to use; None starts a
                :class:`VLLMEmbedder` on ``config.embedding_model``
                (:func:`resolve_embedding_model`), shut down by :meth:`close`.
            batch_size: texts per embedding call (>= 1).

        Raises:
            DecontaminationError: ``embedding_model`` names no usable local
                model, or vLLM cannot load it as an embedding model (one line).
            EngineError: the model returned vectors of the wrong shape, zero or
                non-finite vectors, or failed while embedding.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        owned = model is None
        if model is None:
            resolved = resolve_embedding_model(config.embedding_model)
            from ..engines.base import EngineError

            try:
                model = VLLMEmbedder(resolved.path, name=resolved.name)
            except (ModelError, EngineError) as exc:
                raise DecontaminationError(f"{OPTION}: {exc}") from None
            model_name = resolved.name
        else:
            model_name = str(getattr(model, "model_name", None) or config.embedding_model
                             or type(model).__name__)
        try:
            return cls._index(benchmarks, config, model, batch_size, model_name, owned)
        except BaseException:
            if owned:
                _close(model)
            raise

    @classmethod
    def _index(cls, benchmarks: Sequence[_Benchmark], config: DecontaminationConfig,
               model: Embedder, batch_size: int, model_name: str,
               owned: bool) -> EmbeddingCheck:
        items = [np.array([i for i, t in enumerate(b.texts) if t.strip()], dtype=np.int64)
                 for b in benchmarks]
        texts = [b.texts[i] for b, kept in zip(benchmarks, items, strict=True) for i in kept]
        vectors = _embed_all(model, texts, batch_size, "evaluation items")
        dim = int(vectors.shape[1]) if len(texts) else 0
        per_set: list[Vectors] = []
        start = 0
        for kept in items:
            per_set.append(vectors[start:start + len(kept)])
            start += len(kept)
        skipped = sum(len(b.texts) for b in benchmarks) - len(texts)
        notes = [f"{skipped} empty evaluation items: the embedding check skips them"
                 ] if skipped else []
        return cls([b.name for b in benchmarks], items, per_set, model,
                   float(config.embedding_threshold), batch_size, model_name, dim, owned,
                   notes)

    def match(self, texts: Sequence[str]) -> list[list[Hit]]:
        """The flagged matches of each text.

        Args:
            texts: what to check (an instruction, with its input).

        Returns:
            per text, in order, a list of ``(benchmark index, item index,
            cosine)``: for each evaluation set (in order) whose most similar
            item has cosine >= :attr:`threshold` (less :data:`ROUNDING`), that
            item (the first of equal ones) and its cosine, clipped to [-1, 1];
            ``[]`` for a clean text and for an empty one.

        Raises:
            EngineError: the model failed or returned vectors of another dimension
                than the items'.
        """
        found: list[list[Hit]] = [[] for _ in texts]
        if self._model is None:
            raise RuntimeError("the embedding check is closed")
        asked = [k for k, text in enumerate(texts) if text.strip()]
        if not asked or not any(len(kept) for kept in self._items):
            return found
        for start in range(0, len(asked), self.batch_size):
            chunk = asked[start:start + self.batch_size]
            queries = _embed_all(self._model, [texts[k] for k in chunk], len(chunk), "texts")
            if queries.shape[1] != self.dim:
                from ..engines.base import EngineError

                raise EngineError(f"the embedding model returned {queries.shape[1]}-dimensional "
                                  f"vectors for texts, {self.dim} for the evaluation items")
            for benchmark, (kept, vectors) in enumerate(zip(self._items, self._vectors,
                                                            strict=True)):
                if not len(kept):
                    continue
                similarity = queries @ vectors.T  # (len(chunk), items): cosines
                best = np.argmax(similarity, axis=1)
                scores = np.clip(similarity[np.arange(len(chunk)), best], -1.0, 1.0)
                for row in np.flatnonzero(scores >= self.threshold - ROUNDING):
                    found[chunk[row]].append((benchmark, int(kept[best[row]]),
                                              float(scores[row])))
        return found

    def describe(self) -> dict[str, Any]:
        """The check for a manifest: model, threshold (inclusive), dimension, items
        embedded per evaluation set, and the model's own description if it has one."""
        info: dict[str, Any] = {"model": self.model_name, "threshold": self.threshold,
                                "inclusive": True, "dim": self.dim,
                                "items": {n: len(k) for n, k in zip(self.names, self._items,
                                                                    strict=True)}}
        describe = getattr(self._model, "describe", None)
        if callable(describe):
            info["engine"] = describe()
        return info

    def close(self) -> None:
        """Shut down the model if the check started it (idempotent); :meth:`match`
        cannot be called afterwards."""
        model, self._model = self._model, None
        if model is not None and self._owned:
            _close(model)


def _close(model: Any) -> None:
    close = getattr(model, "close", None)
    if callable(close):
        close()


def _embed_all(model: Embedder, texts: list[str], batch_size: int, what: str) -> Vectors:
    """``texts`` embedded ``batch_size`` at a time and normalized: ``(len(texts), dim)``;
    ``(0, 0)`` for no texts."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    blocks = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        blocks.append(normalized(model.embed(batch), len(batch), what))
    if len({b.shape[1] for b in blocks}) > 1:
        from ..engines.base import EngineError

        raise EngineError(f"the embedding model returned vectors of different dimensions "
                          f"for {what}: {sorted({b.shape[1] for b in blocks})}")
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


class VLLMEmbedder:
    """An embedding model loaded in this process with vLLM's pooling runner.

    ``vllm.LLM(runner="pooling", convert="embed")``: a model vLLM knows as an
    embedding model (``BertModel``, ``XLMRobertaModel``, a sentence-transformers
    directory, ...) runs as it is, with its own pooling; a causal LM
    (``*ForCausalLM``) is adapted by vLLM (``as_embedding_model``: the hidden
    state of the last token). Embeddings are read with ``LLM.embed``; texts
    longer than the context are truncated to it (``truncate_prompt_tokens=-1``:
    the first ``max_model_len`` tokens, the tokenizer's special tokens kept).

    Create it from a CLI entry point or under ``if __name__ == "__main__"`` (vLLM
    starts worker processes), embed any number of batches, then :meth:`close`.
    vLLM is imported only when one is created.

    Args:
        path: a local model directory (see :func:`resolve_embedding_model`).
        dtype: vLLM's dtype; ``"auto"`` is float32 on a CPU without bfloat16
            arithmetic (:func:`~selfinstruct.engines.offline.resolve_dtype`).
        max_model_len: the context in tokens; None = the model's own.
        gpu_memory_utilization: the share of GPU memory vLLM may take (lower it
            when another engine holds the same GPU).
        seed: the engine seed (embedding draws nothing at random).
        name: the name for provenance; default: the directory's name.

    Attributes:
        model_name: ``name``.
        max_model_len: the context in tokens vLLM runs with.

    Raises:
        ModelError: vLLM loaded the model but it offers no ``embed`` task.
        EngineError: vLLM failed to load it (one line).
    """

    def __init__(self, path: str, dtype: VLLMDType = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, seed: int = 0,
                 name: str | None = None):
        from ..config import EngineConfig
        from ..engines.base import EngineError
        from ..engines.offline import (_EngineOutput, _quiet_vllm_logs_when_stopping,
                                       _start_orphan_watchdog, vllm_engine_args)

        self.model_name = name or Path(path).name
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import vllm
        from vllm.platforms import current_platform

        _quiet_vllm_logs_when_stopping()
        engine = EngineConfig(dtype=dtype, max_model_len=max_model_len,
                              gpu_memory_utilization=gpu_memory_utilization)
        kwargs = vllm_engine_args(engine, seed, current_platform.is_cpu())
        kwargs.pop("structured_outputs_config", None)  # nothing is decoded
        if max_model_len is None:
            # the model's own context: let vLLM size the batch to it
            kwargs.pop("max_num_batched_tokens", None)
        self._dtype = str(kwargs["dtype"])
        self._output = _EngineOutput()
        try:
            with self._output.capture():
                self._llm = vllm.LLM(model=path, runner="pooling", convert="embed", **kwargs)
        except Exception as exc:  # vLLM raises many types for a model it cannot load
            self._output.close()
            raise EngineError(f"{self.model_name}: vLLM cannot load it as an embedding "
                              f"model: {exc}".splitlines()[0]) from None
        self._watchdog = _start_orphan_watchdog()
        supported = tuple(self._llm.supported_tasks)
        if "embed" not in supported:
            self.close()
            raise ModelError(f"{self.model_name}: not an embedding model: vLLM's pooling "
                             f"runner offers {', '.join(supported) or 'no task'} for it")
        self.max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        self.version = vllm.__version__

    def embed(self, texts: list[str]) -> Vectors:
        """Embed ``texts`` (non-empty strings) in one batch.

        Returns:
            a ``(len(texts), dim)`` float32 matrix, in order; ``(0, 0)`` for no texts.

        Raises:
            EngineError: the engine failed, or returned no vector for a text.
        """
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        from ..engines.base import EngineError
        from ..signals import stopping

        if getattr(self, "_llm", None) is None:
            raise EngineError(f"{self.model_name}: the embedding model is closed")
        try:
            outputs = self._llm.embed(list(texts), use_tqdm=False,
                                      tokenization_kwargs={"truncate_prompt_tokens": -1})
        except Exception as exc:
            if stopping():
                raise
            raise EngineError(f"{self.model_name}: embedding failed: {exc}"
                              .splitlines()[0]) from None
        for text, out in zip(texts, outputs, strict=True):
            error = getattr(out, "error", None)
            if error is not None or not out.outputs.embedding:
                raise EngineError(f"{self.model_name}: embedding failed for a text of "
                                  f"{len(text)} characters: {error or 'no vector'}"
                                  .splitlines()[0])
        return np.asarray([out.outputs.embedding for out in outputs], dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """The engine for the manifest: vLLM's version, runner, dtype, context."""
        return {"backend": "vllm", "runner": "pooling", "convert": "embed",
                "version": self.version, "dtype": self._dtype,
                "max_model_len": self.max_model_len}

    def close(self) -> None:
        """Shut the engine's processes down (idempotent), as the offline engine does."""
        from ..engines.offline import shut_down

        shut_down(self)
