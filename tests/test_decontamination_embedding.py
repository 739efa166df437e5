"""The embedding check of decontamination (selfinstruct/decontamination/embedding.py).

The fast tests drive :class:`EmbeddingCheck` with small deterministic embedders
written here: a table of given vectors (exact cosines, to test the threshold and
the choice of the best item) and bag-of-words hashing vectors (real sentences).
The engine test runs :class:`VLLMEmbedder` on the embedded SmolLM2-135M, which
vLLM adapts into an embedding model (the last token's hidden state).
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import numpy as np
import pytest

from selfinstruct.config import DecontaminationConfig
from selfinstruct.decontamination import DecontaminationError
from selfinstruct.decontamination import embedding
from selfinstruct.decontamination.embedding import (ROUNDING, EmbeddingCheck, VLLMEmbedder,
                                                    normalized, resolve_embedding_model)
from selfinstruct.engines.base import EngineError


def bench(name: str, *texts: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, texts=list(texts))


def config(threshold: float = 0.9, model: str | None = None) -> DecontaminationConfig:
    return DecontaminationConfig(methods=["embedding"], embedding_model=model or "fake",
                                 embedding_threshold=threshold)


class Table:
    """Each text's vector looked up in a table; records every call's texts."""

    def __init__(self, vectors: dict[str, list[float]]):
        self.vectors = vectors
        self.calls: list[list[str]] = []
        self.closed = 0

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.array([self.vectors[t] for t in texts], dtype=np.float64)

    def close(self) -> None:
        self.closed += 1


class Hashing:
    """Bag of words hashed into 64 dimensions (counts, not normalized)."""

    dim = 64

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim))
        for row, text in enumerate(texts):
            for word in text.lower().replace(".", " ").replace(",", " ").split():
                out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
        return out


def unit(angle_degrees: float) -> list[float]:
    a = math.radians(angle_degrees)
    return [math.cos(a), math.sin(a)]


# --- thresholds and the best item -------------------------------------------------------

def test_a_match_at_the_threshold_is_flagged_and_just_below_it_is_not():
    model = Table({"item": unit(0), "query": unit(60)})  # cosine 0.5
    check = EmbeddingCheck.build([bench("b", "item")], config(0.5), model)
    [hits] = check.match(["query"])
    assert len(hits) == 1
    benchmark, item, score = hits[0]
    assert (benchmark, item) == (0, 0)
    assert score == pytest.approx(0.5, abs=1e-6)
    check.threshold = 0.5 + 1e-3
    assert check.match(["query"]) == [[]]


def test_an_exact_repeat_is_flagged_at_threshold_one_and_its_score_is_at_most_one():
    text = "Write a function that adds two numbers and returns the sum"
    check = EmbeddingCheck.build([bench("b", text)], config(1.0), Hashing())
    [[(benchmark, item, score)]] = check.match([text])
    assert (benchmark, item) == (0, 0)
    assert 1.0 - ROUNDING <= score <= 1.0
    # (1, 2, 3) scaled to unit length in float32 has a cosine of 0.99999988 with itself
    repeat = Table({"item": [1.0, 2.0, 3.0]})
    check = EmbeddingCheck.build([bench("b", "item")], config(1.0), repeat)
    assert [(b, i) for b, i, _ in check.match(["item"])[0]] == [(0, 0)]
    # and (1, 1, 1, 1, 1, 1, 1) one of 1.00000012, reported as 1
    over = Table({"item": [1.0] * 7})
    check = EmbeddingCheck.build([bench("b", "item")], config(1.0), over)
    assert check.match(["item"])[0][0][2] == 1.0


def test_only_the_most_similar_item_of_each_benchmark_is_reported_in_benchmark_order():
    model = Table({"a0": unit(50), "a1": unit(10), "a2": unit(30),
                   "b0": unit(5), "b1": unit(80),
                   "c0": unit(90),
                   "q": unit(0)})
    benchmarks = [bench("A", "a0", "a1", "a2"), bench("B", "b0", "b1"), bench("C", "c0")]
    check = EmbeddingCheck.build(benchmarks, config(0.5), model)
    [hits] = check.match(["q"])
    assert [(b, i) for b, i, _ in hits] == [(0, 1), (1, 0)]  # C's cosine is 0: not flagged
    assert [s for _, _, s in hits] == pytest.approx([math.cos(math.radians(10)),
                                                     math.cos(math.radians(5))], abs=1e-6)


def test_equal_best_items_report_the_first():
    model = Table({"x": unit(20), "y": unit(-20), "q": unit(0)})
    check = EmbeddingCheck.build([bench("b", "x", "y")], config(0.9), model)
    assert [(b, i) for b, i, _ in check.match(["q"])[0]] == [(0, 0)]


def test_a_negative_threshold_flags_even_opposite_texts():
    model = Table({"item": unit(0), "query": unit(180)})
    check = EmbeddingCheck.build([bench("b", "item")], config(-1.0), model)
    [[(_, _, score)]] = check.match(["query"])
    assert score == pytest.approx(-1.0, abs=1e-6)
    check.threshold = -0.99
    assert check.match(["query"]) == [[]]


def test_a_light_paraphrase_is_closer_than_an_unrelated_text():
    items = ["Write a Python function that returns the factorial of a positive integer n",
             "Name the capital city of every country in South America"]
    check = EmbeddingCheck.build([bench("b", *items)], config(0.6), Hashing())
    paraphrase, unrelated = check.match([
        "Write a Python function which returns the factorial of a given positive integer n",
        "Describe your favourite season and explain why you like it"])
    assert [(b, i) for b, i, _ in paraphrase] == [(0, 0)]
    assert paraphrase[0][2] > 0.8
    assert unrelated == []


# --- batching and empty inputs -----------------------------------------------------------

def test_texts_and_items_are_embedded_in_batches_with_the_same_results():
    items = [f"item number {k} about topic {k % 3}" for k in range(5)]
    texts = [f"a text about item number {k % 5}" for k in range(6)] + ["nothing shared here"]
    small = Hashing()
    batched = EmbeddingCheck.build([bench("b", *items)], config(0.3), small, batch_size=2)
    assert small.calls == [2, 2, 1]
    small.calls.clear()
    got = batched.match(texts)
    assert small.calls == [2, 2, 2, 1]
    whole = EmbeddingCheck.build([bench("b", *items)], config(0.3), Hashing())
    expected = whole.match(texts)
    assert [[i for _, i, _ in hits] for hits in expected] == [[0], [1], [2], [3], [4], [0], []]
    assert [[(b, i) for b, i, _ in hits] for hits in got] == \
        [[(b, i) for b, i, _ in hits] for hits in expected]
    assert [s for hits in got for _, _, s in hits] == \
        pytest.approx([s for hits in expected for _, _, s in hits], abs=1e-6)


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="batch_size"):
        EmbeddingCheck.build([bench("b", "x")], config(), Hashing(), batch_size=0)


def test_no_texts_and_empty_texts_match_nothing_and_are_not_embedded():
    model = Table({"item": unit(0), "same": unit(0)})
    check = EmbeddingCheck.build([bench("b", "item")], config(-1.0), model)
    model.calls.clear()
    assert check.match([]) == []
    assert model.calls == []
    assert check.match(["", "   ", "same"]) == [[], [], [(0, 0, pytest.approx(1.0, abs=1e-6))]]
    assert model.calls == [["same"]]


def test_empty_items_are_skipped_with_a_note_and_indices_stay_those_of_the_set():
    model = Table({"x": unit(0), "y": unit(90), "q": unit(89)})
    check = EmbeddingCheck.build([bench("b", "", "x", " ", "y")], config(0.9), model)
    assert model.calls == [["x", "y"]]
    assert check.notes == ["2 empty evaluation items: the embedding check skips them"]
    assert [(b, i) for b, i, _ in check.match(["q"])[0]] == [(0, 3)]
    assert check.describe()["items"] == {"b": 2}


def test_a_benchmark_without_items_is_skipped_and_the_others_still_match():
    model = Table({"x": unit(0), "q": unit(0)})
    check = EmbeddingCheck.build([bench("empty"), bench("full", "x")], config(0.9), model)
    assert [(b, i) for b, i, _ in check.match(["q"])[0]] == [(1, 0)]
    nothing = EmbeddingCheck.build([bench("empty", "")], config(-1.0), Table({}))
    assert nothing.match(["anything"]) == [[]]
    assert EmbeddingCheck.build([], config(-1.0), Table({})).match(["anything"]) == [[]]


# --- normalization and bad model output --------------------------------------------------

def test_vectors_are_scaled_to_unit_length_so_scale_does_not_change_the_score():
    small = Table({"item": [3.0, 4.0], "q": [4.0, 3.0]})
    large = Table({"item": [3000.0, 4000.0], "q": [0.004, 0.003]})
    scores = []
    for model in (small, large):
        check = EmbeddingCheck.build([bench("b", "item")], config(0.0), model)
        scores.append(check.match(["q"])[0][0][2])
    assert scores[0] == pytest.approx(0.96, abs=1e-6)
    assert scores[1] == pytest.approx(scores[0], abs=1e-6)
    matrix = normalized([[3.0, 4.0], [0.0, -2.0]], 2, "texts")
    assert matrix.dtype == np.float32
    assert np.linalg.norm(matrix, axis=1) == pytest.approx([1.0, 1.0], abs=1e-6)
    assert matrix[0] == pytest.approx([0.6, 0.8], abs=1e-6)


@pytest.mark.parametrize("vectors, message", [
    ([[0.0, 0.0]], "zero or non-finite vector for 1 of 1"),
    ([[float("nan"), 1.0]], "zero or non-finite vector"),
    ([[1.0, float("inf")]], "zero or non-finite vector"),
    ([1.0, 2.0], r"shape \(2,\) for 1 texts"),
    ([[1.0], [2.0]], r"shape \(2, 1\) for 1 texts"),
    ([[]], r"shape \(1, 0\)"),
    ([["a", "b"]], "no matrix"),
])
def test_bad_model_output_is_an_engine_error(vectors, message):
    with pytest.raises(EngineError, match=message):
        normalized(vectors, 1, "texts")


def test_vectors_of_another_dimension_than_the_items_are_an_engine_error():
    model = Table({"item": [1.0, 0.0], "q": [1.0, 0.0, 0.0]})
    check = EmbeddingCheck.build([bench("b", "item")], config(), model)
    with pytest.raises(EngineError, match="3-dimensional vectors for texts, 2 for"):
        check.match(["q"])
    mixed = Table({"a": [1.0, 0.0], "b": [1.0, 0.0, 0.0]})
    with pytest.raises(EngineError, match="different dimensions"):
        EmbeddingCheck.build([bench("b", "a", "b")], config(), mixed, batch_size=1)


# --- the model: resolution, ownership ----------------------------------------------------

def test_a_local_directory_is_the_model(tmp_path):
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "config.json").write_text("{}")
    resolved = resolve_embedding_model(str(tmp_path / "emb"))
    assert (resolved.path, resolved.name, resolved.source) == \
        (str((tmp_path / "emb").resolve()), "emb", "directory")


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith("[decontamination] embedding_model: ")
    return text


def test_unusable_model_settings_are_one_line_errors_naming_the_setting(tmp_path):
    (tmp_path / "bare").mkdir()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    cases = [(None, "not set"),
             (str(tmp_path / "missing"), "model path does not exist"),
             (str(tmp_path / "bare"), "has no config.json"),
             (str(tmp_path / "m.gguf"), "GGUF file cannot be an embedding model")]
    for model, message in cases:
        with pytest.raises(DecontaminationError) as exc:
            resolve_embedding_model(model)
        assert message in _one_line(exc)


def _fake_hub_cache(root: Path, repo: str, files: dict[str, str]) -> Path:
    """A Hugging Face cache holding one snapshot of ``repo`` (its ``main`` ref)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return snapshot


def test_a_hub_id_is_used_only_from_the_local_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(tmp_path, "org/cached-embedder", {"config.json": "{}"})
    resolved = resolve_embedding_model("org/cached-embedder")
    assert (Path(resolved.path), resolved.name, resolved.source) == \
        (snapshot, "org/cached-embedder", "hf-cache")
    with pytest.raises(DecontaminationError) as exc:
        resolve_embedding_model("org/not-downloaded")
    text = _one_line(exc)
    assert "not in the Hugging Face cache" in text
    assert "huggingface-cli download org/not-downloaded" in text
    _fake_hub_cache(tmp_path, "org/no-config", {"README.md": "hi"})
    with pytest.raises(DecontaminationError, match="not in the Hugging Face cache"):
        resolve_embedding_model("org/no-config")


class Started(Table):
    """Stands in for VLLMEmbedder: made from a path, records it."""

    made: ClassVar[list[Started]] = []

    def __init__(self, path: str, name: str | None = None):
        super().__init__({"item": unit(0), "q": unit(0), "boom": [0.0, 0.0]})
        self.path, self.model_name = path, name
        Started.made.append(self)


@pytest.fixture
def started(tmp_path, monkeypatch) -> Path:
    Started.made = []
    monkeypatch.setattr(embedding, "VLLMEmbedder", Started)
    model = tmp_path / "my-embedder"
    model.mkdir()
    (model / "config.json").write_text("{}")
    return model


def test_without_a_model_the_configured_one_is_started_and_closed_by_the_check(started):
    check = EmbeddingCheck.build([bench("b", "item")], config(0.9, str(started)))
    [model] = Started.made
    assert model.path == str(started.resolve())
    assert check.model_name == "my-embedder"
    assert check.describe()["model"] == "my-embedder"
    assert check.match(["q"])[0][0][:2] == (0, 0)
    check.close()
    check.close()
    assert model.closed == 1
    with pytest.raises(RuntimeError, match="closed"):
        check.match(["q"])


def test_a_started_model_is_closed_when_indexing_fails(started):
    with pytest.raises(EngineError):
        EmbeddingCheck.build([bench("b", "boom")], config(0.9, str(started)))
    assert [m.closed for m in Started.made] == [1]


def test_a_model_passed_in_is_not_closed_by_the_check():
    model = Table({"item": unit(0)})
    check = EmbeddingCheck.build([bench("b", "item")], config(), model)
    check.close()
    assert model.closed == 0


def test_a_model_that_cannot_be_loaded_is_a_decontamination_error(started, monkeypatch):
    def refuse(path: str, name: str | None = None) -> Any:
        raise EngineError(f"{name}: vLLM cannot load it as an embedding model: bad weights")

    monkeypatch.setattr(embedding, "VLLMEmbedder", refuse)
    with pytest.raises(DecontaminationError) as exc:
        EmbeddingCheck.build([bench("b", "item")], config(0.9, str(started)))
    assert "my-embedder: vLLM cannot load it" in _one_line(exc)


def test_describe_names_the_model_threshold_and_items():
    check = EmbeddingCheck.build([bench("A", "x", "y"), bench("B", "z")], config(0.85),
                                 Hashing())
    assert check.describe() == {"model": "fake", "threshold": 0.85, "inclusive": True,
                                "dim": 64, "items": {"A": 2, "B": 1}}


def test_the_module_imports_no_engine():
    import subprocess
    import sys

    code = ("import sys, selfinstruct.decontamination.embedding; "
            "print(json.dumps([m for m in ('vllm', 'torch') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == []


# --- the real engine ---------------------------------------------------------------------

ORIGINAL = "Write a function that returns the sum of two integers."
PARAPHRASE = "Write a function which returns the sum of two integers."
WEATHER = "Describe the weather in Paris during the spring."
UNRELATED = ["Name three animals that live in the ocean.",
             "Translate the following sentence into French."]
LONG = "word " * 600  # over the 512-token context: truncated, not refused


@pytest.fixture(scope="module")
def embedded() -> dict[str, Any]:
    """Everything the engine test looks at, from one engine start."""
    import time

    from selfinstruct.models import resolve_model

    path = resolve_model(None).path
    started = time.monotonic()
    embedder = VLLMEmbedder(path, dtype="float32", max_model_len=512, name="smollm2")
    loaded = time.monotonic() - started
    try:
        vectors = embedder.embed([ORIGINAL, ORIGINAL, PARAPHRASE, WEATHER, *UNRELATED,
                                  LONG, LONG + "banana split"])
        check = EmbeddingCheck.build([bench("toy", ORIGINAL, WEATHER)], config(0.95),
                                     embedder)
        results = {"vectors": vectors, "hits": check.match([PARAPHRASE, *UNRELATED, ORIGINAL]),
                   "describe": check.describe(), "empty": embedder.embed([]),
                   "max_model_len": embedder.max_model_len,
                   "hidden": json.loads((Path(path) / "config.json").read_text())["hidden_size"]}
    finally:
        embedder.close()
    print(f"embedding model: load {loaded:.1f} s")
    return results


@pytest.mark.engine
def test_vllm_embeds_a_text_closest_to_itself_and_its_paraphrase(embedded):
    raw = embedded["vectors"]
    assert raw.dtype == np.float32
    assert raw.shape == (8, embedded["hidden"])
    vectors = normalized(raw, 8, "texts")
    cos = vectors @ vectors.T
    original, again, paraphrase, weather, ocean, french = range(6)
    assert cos[original, again] > 0.999
    assert cos[original, paraphrase] > 0.95
    for other in (weather, ocean, french):
        assert cos[original, paraphrase] > cos[original, other] + 0.05
    # the long texts agree in their first 512 tokens: truncated to them, they are one
    assert embedded["max_model_len"] == 512
    assert cos[6, 7] > 0.9999
    assert embedded["empty"].shape == (0, 0)


@pytest.mark.engine
def test_the_check_on_vllm_flags_the_paraphrase_and_not_unrelated_texts(embedded):
    paraphrase, ocean, french, original = embedded["hits"]
    assert [(b, i) for b, i, _ in paraphrase] == [(0, 0)]
    assert paraphrase[0][2] > 0.95
    assert ocean == [] and french == []
    assert [(b, i) for b, i, _ in original] == [(0, 0)]
    assert original[0][2] == pytest.approx(1.0, abs=1e-4)
    describe = embedded["describe"]
    assert describe["model"] == "smollm2"
    assert describe["engine"]["convert"] == "embed"
    assert describe["items"] == {"toy": 2}
