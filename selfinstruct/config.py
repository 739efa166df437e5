"""The run configuration: one typed object, loadable from TOML, overridable by CLI flags.

Every number of the Self-Instruct algorithm is a field here, with the published
default (Wang et al. 2023, §2 and Appendix A). A TOML file may set any field; its
tables mirror the nested models below::

    model = "Qwen/Qwen2.5-7B-Instruct"
    num_instructions = 1000

    [generation]
    temperature = 0.7

    [filters]
    rouge_threshold = 0.7

Unknown keys and wrong types are errors (:class:`ConfigError`) naming the file,
line and field. Types are strict (pydantic strict mode): ``prompt_tasks = true`` or
``temperature = "0.7"`` is refused rather than coerced; an integer is accepted
where a float is expected (``temperature = 1``). Values checked later by other
libraries are checked here first: ``engine.dtype`` against the dtypes vLLM
accepts and ``shards.compression`` against the Parquet codecs of pyarrow.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from .inputs import InputFileError, check_regular_file

# Self-Instruct §2.2, "Filtering and Postprocessing", and the keyword list of its released
# code: instructions mentioning things a text-only model cannot produce or see are dropped.
DEFAULT_BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to",
)

ALPACA_BLACKLIST = (*DEFAULT_BLACKLIST, "video", "audio", "music", "flowchart", "diagram")
"""Stanford Alpaca's keyword list (``generate_instruction.py``): Self-Instruct's plus
media and figures a text-only model cannot produce."""

Recipe = Literal["self-instruct", "alpaca"]
"""How a round makes examples: ``self-instruct`` (Wang et al. 2023, §2.2: instructions,
then classification identification, then instances, three model calls) or ``alpaca``
(Stanford Alpaca's variant: one call writes whole tasks, instruction, input and output,
one instance each, no classification step)."""

RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "self-instruct": {},
    "alpaca": {
        # tatsu-lab/stanford_alpaca, generate_instruction.py (2023): every number below
        # is that script's setting
        "generation.prompt_tasks": 3,          # num_prompt_instructions=3
        "generation.prompt_human_tasks": 3,    # "only sampling from the seed tasks"
        "generation.max_list_items": 19,       # stop=["\n20", "20."]: items 4-19, 16 new
        "generation.temperature": 1.0,         # temperature=1.0
        "generation.top_p": 1.0,               # top_p=1.0
        "generation.max_tokens": 3072,         # max_tokens=3072
        "generation.presence_penalty": 0.0,    # not set: the OpenAI API's default
        "generation.stop": [],                 # no stop besides those before item 20
        "filters.blacklist": list(ALPACA_BLACKLIST),
        # text-davinci-003's context was 4,097 tokens: the API fitted the 3,072-token
        # requests into it; vLLM does the same within max_model_len
        "engine.max_model_len": 4096,
    },
}
"""A recipe's defaults: dotted config key -> value, used where the file and the flags
leave the key unset (``Config``'s ``recipe``). The other settings are shared."""

EMBEDDED_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "alpaca": {
        # Measured on 16 Alpaca prompts of the Self-Instruct seeds with the embedded
        # SmolLM2-135M-Instruct (max_tokens 1024): at Alpaca's temperature 1.0 and top_p
        # 1.0 it wrote 4 well-formed tasks, mostly noise; at 0.7 / 0.9, 64. A 135M model
        # also rambles to any limit, so its blocks get 1024 tokens, not 3072.
        "generation.temperature": 0.7,
        "generation.top_p": 0.9,
        "generation.max_tokens": 1024,
    },
}
"""Where no ``model`` is given (the embedded 135M model), these replace the recipe's
defaults of the same keys; a file or a flag still wins. The run says so when it starts
(:meth:`~selfinstruct.run.GenerateJob.prepare`)."""


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming file, line and field."""


class _Section(BaseModel):
    # strict: no bool -> int or str -> number coercion; int -> float is still allowed.
    # allow_inf_nan=False: nan and inf (TOML and float() accept both) are refused in every
    # float field; nan would pass every range check, as all comparisons with it are false.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True,
                              allow_inf_nan=False)


VLLMDType = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
"""The ``dtype`` strings vLLM accepts: its ``vllm.config.model.ModelDType`` (vLLM is
not imported here, so that loading a config stays cheap)."""

PARQUET_CODECS = ("none", "snappy", "gzip", "brotli", "lz4", "lz4_raw", "zstd")
"""Parquet compression names of ``pyarrow.parquet.write_table`` (its documented
valid values, case-insensitive); each must also be built into the installed
pyarrow (``pyarrow.Codec.is_available``)."""


class GenerationConfig(_Section):
    """Instruction generation, the first step of Self-Instruct §2.2 ("Instruction Generation").

    The sampling defaults are those of the paper's released code.
    """

    prompt_tasks: int = Field(8, ge=1, le=15, description="pool tasks shown in each prompt")
    prompt_human_tasks: int = Field(6, ge=0, description="of which human seed tasks")
    max_list_items: int = Field(
        15, ge=2, le=99, description="the model is stopped before writing item max_list_items+1"
    )
    prompts_per_round: int = Field(
        64, ge=1, description="instruction-generation prompts sent to the engine at once in "
                              "each round"
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0,
                               description="instruction sampling temperature")
    top_p: float = Field(0.5, gt=0.0, le=1.0, description="instruction sampling top-p")
    max_tokens: int = Field(1024, ge=16,
                            description="output token limit per instruction-generation prompt")
    presence_penalty: float = Field(
        2.0, ge=-2.0, le=2.0,
        description="instruction sampling presence penalty: subtracted once from the logit "
                    "of every token already generated, in [-2, 2]")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0,
                                     description="penalty per earlier occurrence of a token")
    stop: list[str] = Field(
        default_factory=lambda: ["\n\n"],
        description="stop strings besides the one before item max_list_items+1 (the "
                    "reference stops at a blank line)")
    max_rounds: int = Field(
        1000, ge=1, description="give up after this many rounds even if short of the target"
    )
    pipeline_depth: int = Field(
        3, ge=1, le=4,
        description="rounds in flight at once: each engine call carries the next stage of "
                    "every one, so the engine gets fuller batches; a round's prompts then "
                    "show machine tasks of the rounds committed when it started "
                    "(depth - 1 rounds older than at 1, the paper's strict order)")

    @model_validator(mode="after")
    def _human_le_total(self) -> GenerationConfig:
        if self.prompt_human_tasks > self.prompt_tasks:
            raise ValueError("prompt_human_tasks must not exceed prompt_tasks")
        if self.prompt_tasks >= self.max_list_items:
            raise ValueError("prompt_tasks must be smaller than max_list_items")
        return self


class ClassificationConfig(_Section):
    """Classification task identification, the second step of Self-Instruct §2.2
    ("Classification Task Identification")."""

    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(3, ge=1)


class InstanceConfig(_Section):
    """Instance generation, the third step of Self-Instruct §2.2 ("Instance Generation"):
    input-first, or output-first for classification tasks.

    The sampling defaults are those of the paper's released code.
    """

    max_instances: int = Field(5, ge=1, description="instances kept per task at most")
    near_duplicate_threshold: float | None = Field(
        90.0, ge=0.0, le=100.0,
        description="drop an instance whose instruction + input scores at least this "
                    "(rapidfuzz ratio, 0-100) against another task's example; None = off",
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(350, ge=16, description="output token limit, input-first")
    output_first_max_tokens: int = Field(
        300, ge=16, description="output token limit, output-first (classification tasks)")
    presence_penalty: float = Field(
        1.5, ge=-2.0, le=2.0,
        description="presence penalty of instance sampling, as generation.presence_penalty")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)


class FilterConfig(_Section):
    """Instruction and instance filters, the last step of Self-Instruct §2.2
    ("Filtering and Postprocessing")."""

    min_words: int = Field(4, ge=0, description="instructions with fewer words are dropped")
    max_words: int = Field(150, ge=1, description="instructions with more words are dropped")
    blacklist: list[str] = Field(default_factory=lambda: list(DEFAULT_BLACKLIST))
    bad_prefixes: list[str] = Field(default_factory=lambda: ["Write a program"])
    reject_punctuation_start: bool = True
    reject_non_ascii_start: bool = Field(
        True, description="drop instructions starting with a non-ASCII character")
    rouge_threshold: float = Field(
        0.7, ge=0.0, le=1.0,
        description="drop instructions whose ROUGE-L F1 to the pool exceeds this"
    )
    rouge_tokenizer: Literal["rouge", "unicode"] = Field(
        "rouge", description="the ROUGE-L tokenizer: rouge = rouge_score's (exact parity, "
                             "Latin only), unicode = any script, CJK per character")

    @model_validator(mode="after")
    def _min_le_max(self) -> FilterConfig:
        if self.min_words > self.max_words:
            raise ValueError("min_words must not exceed max_words")
        return self


def display_url(url: str) -> str:
    """A URL as it may be shown or stored: ``scheme://host[:port]/path``, nothing else.

    The one renderer of URLs for people and files (error messages, logs, progress
    lines, the manifest): a user name, password, query and fragment are never
    part of it, whatever the input, and characters that are not printable
    (controls, spaces) are percent-encoded so no terminal escape gets through.
    Input that has no scheme and host (``user:secret@host:8000``) is shown as
    ``(not a URL)``: its text may be anything, a secret included.

    Args:
        url: any text.

    Returns:
        The rendering; for a URL :func:`normalize_base_url` accepted, the URL itself.
    """
    from urllib.parse import quote, urlsplit

    try:
        parts = urlsplit(str(url).strip())
        host = parts.hostname
    except ValueError:  # e.g. an unbalanced "[" in the host
        return "(not a URL)"
    if not parts.scheme or not host:
        return "(not a URL)"
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range: not shown
        port = None
    if ":" in host:  # IPv6
        host = f"[{host}]"
    text = f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path}"
    return "".join(c if c.isprintable() and not c.isspace() else quote(c, safe="")
                   for c in text)


def normalize_base_url(url: str) -> str:
    """An OpenAI-compatible server's base URL in canonical form, ending before ``/models``.

    ``http://host:8000`` and ``http://host:8000/`` become ``http://host:8000/v1``;
    a URL with a path (``http://host/v1``, ``https://proxy/llm/v1``) keeps it, less a
    trailing slash. The result is its own :func:`display_url`, so it can be shown
    and stored as it is.

    A URL holding credentials (``http://user:secret@host``) or a query
    (``?api_key=...``) is refused, not used: a secret in a URL is in the shell
    history and in ``ps`` output before this code sees it, and would be in the
    run's manifest and every message naming the endpoint. vLLM's server takes a
    Bearer token (``vllm serve --api-key``), so the key has one home, the
    environment variable ``engine.api_key_env``, and is never displayed. The
    refusal shows the URL through :func:`display_url`, without the secret.

    Raises:
        ValueError: not http(s), no host, a bad port, credentials, a query or a
            fragment, or a space or control character in the URL.
    """
    from urllib.parse import urlsplit

    text = str(url).strip()
    shown = display_url(text)
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        what = shown if shown != "(not a URL)" else "a base URL"
        raise ValueError(f"{what} is not an http:// or https:// URL with a host "
                         "(e.g. http://127.0.0.1:8000/v1)")
    if "@" in parts.netloc:
        raise ValueError(f"{shown}: a base URL must not hold a user name or password; put "
                         "the API key in the environment variable named by engine.api_key_env")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError(f"{shown}: a base URL takes no query (?...) or fragment (#...); put "
                         "an API key in the environment variable named by engine.api_key_env")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (parts.netloc.endswith(":") and port is None):
        raise ValueError(f"{shown}: the port must be a number from 1 to 65535")
    if any(not c.isprintable() or c.isspace() for c in text):
        raise ValueError(f"{shown}: a base URL holds no space or control character")
    path = parts.path.rstrip("/") or "/v1"
    return display_url(f"{parts.scheme}://{parts.netloc}{path}")


class EngineConfig(_Section):
    """How the model is run: in process (``vllm``), over HTTP, or on a Ray cluster.

    ``http`` sends every request to OpenAI-compatible servers (``vllm serve``) at
    ``base_urls``; giving ``base_urls`` without a ``backend`` selects it. ``ray``
    splits each stage's batch over vLLM replicas on a Ray cluster (long-lived Ray
    actors, one per GPU by default, started once per run).
    """

    backend: Literal["vllm", "http", "ray"] = "vllm"
    base_urls: list[str] = Field(
        default_factory=list, validate_default=True,
        description="OpenAI-compatible endpoints (http://host:8000 or .../v1); requests are "
                    "spread over all of them",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", min_length=1,
        description="environment variable holding the API key (sent as a Bearer token; "
                    "unset = no key)",
    )
    max_in_flight: int = Field(
        256, ge=1, description="requests in flight per endpoint at most (keep it at or above "
                               "the server's --max-num-seqs)")
    request_timeout: float = Field(
        600.0, gt=0.0, description="seconds one HTTP request may take, queueing in the server "
                                   "included, before it is retried")
    max_retries: int = Field(
        8, ge=0, description="retries of one request after a connection error, timeout, "
                             "429 or 5xx (never after another 4xx)")
    retry_backoff: float = Field(
        1.0, gt=0.0, description="seconds: exponential backoff with full jitter, "
                                 "random(0, min(30, retry_backoff * 2**attempt))")
    endpoint_down_after: float = Field(
        30.0, gt=0.0, description="seconds an endpoint may fail to answer at all (connection "
                                  "errors, timeouts) before it gets no more requests")
    ray_address: str | None = Field(
        None, description="Ray cluster for --backend ray (ray.init address); None = "
                          "$RAY_ADDRESS or the cluster of `ray job submit`, else a local one")
    ray_replicas: int | None = Field(
        None, ge=1, description="vLLM replicas for --backend ray, started once per run, each "
                                "with tensor_parallel_size GPUs; None = as many as the "
                                "cluster's GPUs allow, or 1 on a cluster without GPUs")
    ray_batch_size: int = Field(
        1024, ge=1, description="requests per call to a Ray replica: a replica's share of a "
                                "stage goes in calls of this many, one after another (a few "
                                "times vLLM's max_num_seqs keeps its batch full)")
    dtype: VLLMDType = Field("auto", description="model weights' dtype for vLLM")
    max_model_len: int | None = Field(
        2048, ge=128, description="context length for vLLM, prompt and output tokens; None = "
                                  "the model's own")
    enforce_eager: bool = Field(True, description="skip CUDA-graph / compile warm-up")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1)
    chat_template: bool = Field(
        False,
        description="wrap prompts in the model's chat template "
                    "(the paper's prompts are continuations)",
    )

    @model_validator(mode="before")
    @classmethod
    def _base_urls_imply_http(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("base_urls") and "backend" not in data:
            data = {**data, "backend": "http"}
        return data

    @field_validator("base_urls")
    @classmethod
    def _check_urls(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        backend = info.data.get("backend")
        if backend == "http" and not urls:
            raise ValueError("backend 'http' needs at least one base URL (--base-url)")
        if backend != "http" and urls:
            raise ValueError(f"base URLs are for backend 'http', not {backend!r} (the http "
                             "backend is how existing endpoints are used)")
        normalized = [normalize_base_url(u) for u in urls]
        if len(set(normalized)) != len(normalized):
            raise ValueError("the same base URL is given twice")
        return normalized


class QualityConfig(_Section):
    """Quality scoring: a model judges every example (the three questions of Self-Instruct
    §3.3, each on a fixed scale with a rationale, plus an overall score), and cuts or a
    budget keep the best. Off by default, so a default run is the paper's algorithm.
    """

    judge: bool = Field(False, description="judge every example after instance generation")
    judge_model: str | None = Field(
        None, description="the judge: HF id, local directory or .gguf (or a served model name "
                          "with judge_base_urls); None = the generating model and engine")
    judge_base_urls: list[str] = Field(
        default_factory=list, validate_default=True,
        description="OpenAI-compatible endpoints serving the judge; empty = judge in the "
                    "generating backend")
    rubric: str = Field("judge", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
                        description="rubric template: prompts/<rubric>.jinja")
    scale_min: int = Field(1, description="lowest score of the fixed scale")
    scale_max: int = Field(5, description="highest score of the fixed scale")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="judge sampling temperature")
    max_tokens: int = Field(256, ge=16, description="output token limit per judge request")
    chat_template: bool = Field(True, description="wrap judge prompts in the judge's chat "
                                                  "template")
    structured_output: bool = Field(
        True, description="constrain judge answers to the verdict's JSON schema where the "
                          "backend can (vLLM's structured outputs)")
    reward_model: str | None = Field(
        None, description="score with this sequence-classification reward model (local "
                          "directory or HF id) through vLLM's pooling runner instead of the "
                          "judge (selfinstruct score only)")
    min_reward: float | None = Field(None, description="drop examples whose reward is below "
                                                       "this (low_quality)")
    min_overall: float | None = Field(None, description="drop examples whose overall score "
                                                        "is below this (low_quality)")
    min_instruction: float | None = Field(None, description="the same cut on the instruction "
                                                            "score")
    min_input: float | None = Field(None, description="the same cut on the input score")
    min_output: float | None = Field(None, description="the same cut on the output score")
    keep_best: float | None = Field(
        None, gt=0.0, description="budget: keep the N best examples (N >= 1, a whole "
                                  "number) or that fraction of them (0 < N < 1)")
    diversity_threshold: float = Field(
        0.7, ge=0.0, le=1.0,
        description="with keep_best: skip an example whose instruction's ROUGE-L F1 to one "
                    "already selected exceeds this")

    @model_validator(mode="after")
    def _check(self) -> QualityConfig:
        if self.scale_min >= self.scale_max:
            raise ValueError("scale_min must be smaller than scale_max")
        return self

    @field_validator("min_overall", "min_instruction", "min_input", "min_output")
    @classmethod
    def _cut_on_scale(cls, cut: float | None, info: ValidationInfo) -> float | None:
        low, high = info.data.get("scale_min", 1), info.data.get("scale_max", 5)
        if cut is not None:
            if not info.data.get("judge"):
                raise ValueError("a quality cut needs judge = true (--judge)")
            if not low <= cut <= high:
                raise ValueError(f"{cut:g} is outside the scale {low}-{high}")
        return cut

    @field_validator("min_reward")
    @classmethod
    def _reward_cut(cls, cut: float | None, info: ValidationInfo) -> float | None:
        if cut is not None and not info.data.get("reward_model"):
            raise ValueError("a reward cut needs a reward model (--reward-model)")
        return cut

    @field_validator("keep_best")
    @classmethod
    def _whole_or_fraction(cls, budget: float | None, info: ValidationInfo) -> float | None:
        if budget is not None:
            if not info.data.get("judge"):
                raise ValueError("a budget needs judge = true (--judge)")
            if budget >= 1 and budget != int(budget):
                raise ValueError("a whole number of examples (>= 1) or a fraction "
                                 "(0 < keep_best < 1)")
        return budget

    @field_validator("judge_model")
    @classmethod
    def _judge_model_needs_judge(cls, model: str | None, info: ValidationInfo) -> str | None:
        if model is not None and not info.data.get("judge"):
            raise ValueError("a judge model needs judge = true (--judge)")
        return model

    @field_validator("judge_base_urls")
    @classmethod
    def _check_urls(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        if urls and not info.data.get("judge"):
            raise ValueError("judge endpoints need judge = true (--judge)")
        normalized = [normalize_base_url(u) for u in urls]
        if len(set(normalized)) != len(normalized):
            raise ValueError("the same base URL is given twice")
        return normalized

    def cuts(self) -> dict[str, float]:
        """Score name (:data:`~selfinstruct.quality.SCORES`, or ``"reward"``) -> the
        lowest score kept."""
        values = {"overall": self.min_overall, "instruction": self.min_instruction,
                  "input": self.min_input, "output": self.min_output,
                  "reward": self.min_reward}
        return {name: value for name, value in values.items() if value is not None}

    def selecting(self) -> bool:
        """Whether a cut or a budget uses the scores."""
        return bool(self.cuts()) or self.keep_best is not None


DecontaminationMethod = Literal["ngram", "rouge", "embedding"]
DEFAULT_METHODS: tuple[DecontaminationMethod, ...] = ("ngram", "rouge")


class DecontaminationConfig(_Section):
    """Decontamination: drop instructions and examples that repeat an evaluation set
    (README "Decontamination"; :mod:`selfinstruct.decontamination`). Off (no
    evaluation set) by default, so a default run is the paper's algorithm.
    """

    against: list[str] = Field(
        default_factory=list,
        description="evaluation sets, each [NAME=]PATH[:FIELD,...] (a local record file or "
                    "save_to_disk directory); empty = no check")
    methods: list[DecontaminationMethod] = Field(
        default_factory=lambda: list(DEFAULT_METHODS),
        description="the checks run: ngram, rouge, embedding (needs embedding_model)")
    ngram: int = Field(13, ge=1, description="words per n-gram: sharing one n-gram of "
                                             "normalized words with an item flags an example "
                                             "(GPT-3's 13-gram rule)")
    min_item_tokens: int = Field(8, ge=1, description="an item shorter than ngram words is "
                                                      "matched whole if it has this many, else "
                                                      "skipped")
    rouge_threshold: float = Field(0.7, ge=0.0, le=1.0,
                                   description="ROUGE-L F1 of instruction + input to an item "
                                               "above which an example is flagged")
    embedding_model: str | None = Field(
        None, description="a local embedding model (directory) for the embedding check")
    embedding_threshold: float = Field(0.9, ge=-1.0, le=1.0,
                                       description="cosine similarity at or above which "
                                                   "the embedding check flags an example")
    cache_dir: Path | None = Field(None, strict=False,
                                   description="where built indexes are cached; None = "
                                               "$SELFINSTRUCT_CACHE or ~/.cache/selfinstruct")

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one method (ngram, rouge, embedding)")
        if len(set(value)) != len(value):
            raise ValueError(f"a method is named twice: {value}")
        return value

    @model_validator(mode="after")
    def _embedding_needs_a_model(self) -> DecontaminationConfig:
        if "embedding" in self.methods and self.embedding_model is None:
            raise ValueError("methods: 'embedding' needs embedding_model (a local embedding "
                             "model directory)")
        return self


class ShardConfig(_Section):
    """Parquet shard layout."""

    shard_size: int = Field(10_000, ge=1, description="rows per Parquet file at most")
    compression: str = Field("zstd", description="a Parquet codec, one of PARQUET_CODECS")

    @field_validator("compression")
    @classmethod
    def _known_codec(cls, name: str) -> str:
        if name.lower() not in PARQUET_CODECS:
            raise ValueError(f"unknown Parquet compression {name!r} (use one of "
                             f"{', '.join(PARQUET_CODECS)})")
        if name.lower() != "none":
            import pyarrow as pa

            if not pa.Codec.is_available(name.lower()):
                raise ValueError(f"compression {name!r} is not built into this pyarrow")
        return name


class Config(_Section):
    """Everything a ``selfinstruct generate`` run needs; see the module docstring."""

    recipe: Recipe = Field(
        "self-instruct",
        description="self-instruct (the paper: instructions, classification, instances) or "
                    "alpaca (Stanford Alpaca: one call writes 16 whole tasks; its settings "
                    "become the defaults)")
    model: str | None = Field(None, description="HF id, local directory or .gguf; None = embedded")
    # Paths come as strings from TOML and manifests: not strict.
    seeds: Path | None = Field(None, strict=False,
                               description="seed file or directory; None = the bundled seeds/")
    prompts: Path | None = Field(None, strict=False,
                                 description="template directory; None = the bundled prompts/")
    output: Path = Field(Path("outputs/run"), strict=False,
                         description="output directory for shards, ledger and manifest")
    num_instructions: int = Field(100, ge=1, description="new tasks (with instances) to produce")
    seed: int = Field(0, description="run seed: prompt sampling and per-request sampling seeds")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    instances: InstanceConfig = Field(default_factory=InstanceConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    shards: ShardConfig = Field(default_factory=ShardConfig)

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """Fill the recipe's defaults (:data:`RECIPE_DEFAULTS`, and with no ``model``
        :data:`EMBEDDED_RECIPE_DEFAULTS`) into the keys left unset."""
        if not isinstance(data, dict):
            return data
        recipe = data.get("recipe", "self-instruct")
        defaults = RECIPE_DEFAULTS.get(recipe) if isinstance(recipe, str) else None
        if not defaults:  # the default recipe, or an unknown one (refused by its field)
            return data
        if data.get("model") is None:  # the embedded model
            defaults = {**defaults, **EMBEDDED_RECIPE_DEFAULTS.get(recipe, {})}
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for dotted, value in defaults.items():
            section, key = dotted.split(".")
            table = data.setdefault(section, {})
            if isinstance(table, dict):  # not a table: its own field reports it
                table.setdefault(key, list(value) if isinstance(value, list) else value)
        return data

    def to_json_dict(self) -> dict[str, Any]:
        """The resolved configuration as JSON-ready data (paths as strings)."""
        return self.model_dump(mode="json")


def _key_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort 1-based line of the TOML key at ``loc`` (a pydantic error location).

    tomllib keeps no positions, so the key is located by scanning for its table
    header and then the ``key =`` line; None when it cannot be found.
    """
    keys = [str(k) for k in loc if isinstance(k, str)]
    if not keys:
        return None
    *tables, leaf = keys
    lines = text.splitlines()
    current: list[str] = []
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        header = re.match(r"^\[\s*([^\]]+?)\s*\]$", stripped)
        if header:
            current = [part.strip().strip('"') for part in header.group(1).split(".")]
            if current == keys:
                return number
            continue
        if current == tables and re.match(rf'^"?{re.escape(leaf)}"?\s*=', stripped):
            return number
    return None


def _format_validation_error(err: ValidationError, source: str, text: str | None) -> str:
    first = err.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(str(k) for k in loc) or "(top level)"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    line = _key_line(text, loc) if text is not None else None
    where = f"{source}:{line}" if line else source
    return f"{where}: field '{field}': {message}"


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None,
                option_names: dict[str, str] | None = None) -> Config:
    """Build the run configuration from an optional TOML file plus CLI overrides.

    Args:
        path: a TOML file, or None for the defaults.
        overrides: dotted keys (``"generation.temperature"``) to values; a value of
            None means "not given" and is ignored. Overrides win over the file.
        option_names: dotted key -> CLI option (``"--temperature"``), so an error
            in an override names the option the user typed.

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: the file is missing or not a regular file, not UTF-8, not
            valid TOML, has an unknown key, or a value of the wrong type (strict:
            no coercion but int to float) or range, an unknown ``engine.dtype``
            or ``shards.compression``. One line: file, line, field.
    """
    data: dict[str, Any] = {}
    text: str | None = None
    if path is not None:
        try:
            check_regular_file(path, missing="config file not found")
            raw = Path(path).read_bytes()
        except InputFileError as exc:
            raise ConfigError(str(exc)) from None
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: config file is not valid UTF-8") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        dotted = ".".join(str(k) for k in first["loc"])
        given = {k for k, v in (overrides or {}).items() if v is not None}
        if dotted in given or path is None:
            option = (option_names or {}).get(dotted, dotted)
            raise ConfigError(f"option {option}: {first['msg']}") from None
        raise ConfigError(_format_validation_error(err, str(path), text)) from None
