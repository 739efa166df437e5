"""``selfinstruct score``: judge any SFT data set, resumably, with the judging stage.

The input is anything ``inspect`` reads (a run directory, the 52K Alpaca file,
another tool's JSON/JSONL/Parquet/CSV output, a ``save_to_disk`` directory).
Its examples are judged in chunks of ``chunk_size``; each chunk is one round of
a ledger like a ``generate`` run's (the judge requests and the judged rows,
then ``commit.json``), so a crash loses at most the chunk in flight and the same
command resumes it. The output directory is a run like any other (shards with
the quality columns of :data:`~selfinstruct.quality.QUALITY_FIELDS`, a
manifest), so ``inspect`` and ``export`` read it.

The ledger keeps every judged example; the cuts (``quality.min_*``) and the
budget (``quality.keep_best``) decide which rows become shards, so running the
same command again with other cuts re-derives the shards from the recorded
verdicts, with no model call.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .engines import Engine, EngineError, Prepared, backend
from .models import ModelError
from .prompts import PromptBuilder, PromptError
from .quality import example_key, passes_cuts, quality_values
from .run import (RESUMABLE_CHANGES, JobError, _flatten, check_identity, lock_run,
                  option_names, package_versions, previous_manifest, start_or_refuse,
                  throughput)
from .storage.ledger import LEDGER_DIR, LOCK_FILE, LedgerError
from .storage.manifest import (MANIFEST, MANIFEST_FORMAT, Manifest, write_manifest)
from .storage.shards import DATA_DIR, ShardInfo, ShardWriter, messages_for, remove_unlisted
from .tasks import Candidate, Instance

SCORE_RESUMABLE = (*RESUMABLE_CHANGES, "quality.min_overall", "quality.min_instruction",
                   "quality.min_input", "quality.min_output", "quality.min_reward")
"""Settings a ``score`` run may change when it is run again: hosting, and which
recorded verdicts become shards."""

KEPT_COLUMNS = ("is_classification", "model", "round", "prompt_task_ids",
                "nearest_instruction", "nearest_rouge_l")
"""Shard columns taken from the input when it has them (a ``generate`` run's)."""


@dataclass
class ScoreJob:
    """A validated ``score`` job. Build it with :meth:`prepare`; run it with :meth:`execute`.

    Attributes:
        config: ``model`` and ``engine`` are the judge's; ``quality`` the rubric,
            scale, sampling, cuts and budget (``quality.judge`` is on).
        source: the input as given.
        examples: the input's rows (``id``, ``task_id``, ``instruction``, ``input``,
            ``output`` and any :data:`KEPT_COLUMNS`), in input order.
        chunk_size: examples per ledger round.
        engine: an engine already started to judge with (benchmarks hold one);
            None = start the configured backend's on the first request.
    """

    config: Config
    source: Path
    examples: list[dict[str, Any]]
    prompts: PromptBuilder
    prepared: Prepared
    chunk_size: int
    previous: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC)
                         .isoformat(timespec="seconds"))
    engine: Engine | None = None
    _engine: Any = field(default=None, repr=False)

    @classmethod
    def prepare(cls, source: Path, config_file: Path | None, options: dict[str, Any],
                option_keys: dict[str, str], chunk_size: int = 1000,
                limit: int | None = None) -> ScoreJob:
        """Check the config, the input, the rubric, the judge and the output directory.

        Args:
            source: what to judge (any input of ``inspect``).
            config_file, options, option_keys: as :meth:`selfinstruct.run.GenerateJob.prepare`.
            chunk_size: examples per ledger round (>= 1).
            limit: judge only the first ``limit`` examples.

        Raises:
            JobError: a bad config or option, an unreadable input, a rubric
                template that is missing or lacks a required variable, a judge
                model that does not exist or an endpoint that is down or serves
                another model (seconds: nothing is loaded yet), an output
                directory that is an input, lies in a run, or holds something
                other than a score run of the same settings and input.
        """
        from .analysis.loading import InspectError, load_run

        overrides = {option_keys[name]: value for name, value in options.items()}
        names = option_names(option_keys)
        overrides["quality.judge"] = True
        try:
            config = load_config(config_file, overrides, names)
            prompts = PromptBuilder(config.prompts, rubric=config.quality.rubric)
        except (ConfigError, PromptError) as exc:
            raise JobError(str(exc)) from None
        previous = cls._check_output(config.output, source, config_file)
        try:
            run = load_run(source)
        except InspectError as exc:
            raise JobError(str(exc)) from None
        frame = run.frame if limit is None else run.frame.head(limit)
        columns = ["id", "task_id", "instruction", "input", "output",
                   *[c for c in KEPT_COLUMNS if c in frame.columns]]
        examples = [_plain(row) for row in frame[columns].to_dict("records")]
        try:
            if config.quality.reward_model is not None:
                from .engines.reward import check_reward_model

                if config.engine.backend != "vllm":
                    raise JobError(f"--reward-model runs in process (vLLM's pooling runner), "
                                   f"not with --backend {config.engine.backend}")
                prepared = Prepared(check_reward_model(config.quality.reward_model))
            else:
                prepared = backend(config.engine.backend).prepare(config)
        except (ModelError, EngineError) as exc:
            raise JobError(f"the {'reward model' if config.quality.reward_model else 'judge'}"
                           f": {exc}") from None
        job = cls(config, source, examples, prompts, prepared, chunk_size, previous)
        if previous is not None:
            check_identity(config.output, previous["identity"], job.identity(), "run")
            job.created = previous.get("created", job.created)
        return job

    @staticmethod
    def _check_output(output: Path, source: Path, config_file: Path | None
                      ) -> dict[str, Any] | None:
        """Refuse an output that is an input, lies in a run or cannot be written, or
        holds a run ``score`` did not make; return the manifest of a score run there."""
        from .safety import (OutputPathError, check_not_in_run, check_output_apart,
                             check_writable_dir)

        try:
            check_output_apart(output, {"the input": source, "the config file": config_file},
                               "--output", writes=(MANIFEST, DATA_DIR, LEDGER_DIR, LOCK_FILE))
            if output.exists() and not output.is_dir():
                raise JobError(f"{output}: output path exists and is not a directory")
            check_writable_dir(output, "--output")
            check_not_in_run(output, "--output", allow_run=True)
        except OutputPathError as exc:
            raise JobError(str(exc)) from None
        found = previous_manifest(output)
        if found is None:
            return None
        previous = found[0]
        if "scored_from" not in previous:  # only a score run may be resumed
            raise JobError(f"{output}: holds a selfinstruct run that `score` did not "
                           "make; choose another --output")
        return previous

    def identity(self) -> dict[str, Any]:
        """What makes two ``score`` invocations the same run: settings, judge,
        rubric and the examples (by content, whatever file holds them)."""
        settings = {k: v for k, v in _flatten(self.config.to_json_dict()).items()
                    if k not in SCORE_RESUMABLE and k not in ("model", "prompts")
                    and not k.startswith("decontamination.")}
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(example_key(example["instruction"], example["input"],
                                      example["output"]).encode())
        model = self.prepared.model
        return {"settings": {**settings, "chunk_size": self.chunk_size},
                "model": {"name": model.name, "path": model.path, "gguf_sha256": model.sha256},
                "examples": len(self.examples), "examples_sha256": digest.hexdigest(),
                "prompts_sha256": dict(self.prompts.sha256)}

    # -- running -------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        """Judge every chunk not yet committed, then write shards and the manifest.

        Returns:
            The run's stats (as in the manifest).

        Raises:
            JobError: the output directory is locked or its ledger damaged; the
                judge cannot start.
            EngineError: the judge failed mid-run (committed chunks are kept).
            KeyboardInterrupt: after the run directory is left consistent.
        """
        from .engines.recorded import LazyEngine, RecordedEngine
        from .progress import RichReporter, console
        from .stages.judging import QualityJudging
        from .stats import RunStats
        from .terminal import rich_safe

        config = self.config
        run_dir = lock_run(config.output)
        chosen = backend(config.engine.backend)
        startup = {"seconds": 0.0}

        def start() -> Engine:
            if self.engine is not None:
                self._engine = self.engine
                return self.engine
            started = time.perf_counter()
            self._engine = start_or_refuse(
                lambda: (self._start_reward() if self.rewarding
                         else chosen.start(config, self.prepared)),
                self.prepared.model.path,
                "reward model" if self.rewarding else "judge engine", "the judge: ")
            startup["seconds"] = time.perf_counter() - started
            return self._engine  # type: ignore[no-any-return]

        starting = (f"Loading the reward model {self.prepared.model.name} with vLLM's pooling "
                    "runner ..." if self.rewarding
                    else chosen.starting(config, self.prepared.model.name))
        engine = RecordedEngine(run_dir, LazyEngine(start, on_start=None if self.engine else (
            lambda: console.print(rich_safe(starting)))))
        # every verdict goes to the ledger; the cuts and the budget pick the shards
        judging_config = config.model_copy(update={"quality": config.quality.model_copy(
            update={"min_overall": None, "min_instruction": None, "min_input": None,
                    "min_output": None})})
        stats = RunStats(live=engine.stats)
        stage = QualityJudging(judging_config, self.prompts, stats)
        writer = ShardWriter(config.output, config.shards.shard_size, config.shards.compression)
        started = time.perf_counter()
        judged: list[dict[str, Any]] = []
        try:
            if self.previous is None:
                write_manifest(config.output, self.manifest([], stats, "running", 0.0))
            with RichReporter(len(self.examples), "examples judged", lambda s: (
                    f"{s.judge_failures['ok']} verdicts, "
                    f"{s.judge_failures['judge_unparseable']} unparseable · "
                    f"{s.live_tokens_per_second:.0f} output tok/s")) as reporter:
                for number, start_at in enumerate(range(0, len(self.examples),
                                                        self.chunk_size), start=1):
                    chunk = self.examples[start_at:start_at + self.chunk_size]
                    rows = self._judge_chunk(engine, stage, number, chunk, reporter)
                    new = run_dir.commit_round(number, [], rows)
                    judged.extend(rows)
                    stats.rounds, stats.tasks_written = number, len(judged)
                    stats.seconds = time.perf_counter() - started
                    reporter.round_done(stats)
                    if new:
                        write_manifest(config.output, self.manifest(
                            [], stats, "running", startup["seconds"], pending=len(judged)))
            selected = self.select(judged, stats)
            writer.add(selected)
            stats.rows_written = len(selected)
            stats.seconds = time.perf_counter() - started
            shards = writer.close()
            write_manifest(config.output, self.manifest(shards, stats, "complete",
                                                        startup["seconds"]))
            remove_unlisted(config.output, shards)
        except LedgerError as exc:
            raise JobError(str(exc)) from None
        finally:
            if self.engine is None:
                engine.close()
            run_dir.unlock()
        return stats.to_json_dict()

    def _judge_chunk(self, engine: Any, stage: Any, number: int,
                     chunk: list[dict[str, Any]], reporter: Any) -> list[dict[str, Any]]:
        """The judged rows of one chunk (every example, verdict or not)."""
        candidates = [Candidate(slot=k, item=None, instruction=e["instruction"],
                                prompt_task_ids=(), completion="",
                                instances=(Instance(e["input"], e["output"]),))
                      for k, e in enumerate(chunk)]

        def on_batch(name: str, total: int) -> Any:
            reporter.stage(name, total)
            return reporter.advance

        if self.rewarding:
            return self._reward_chunk(engine, stage.stats, number, chunk, on_batch)
        records = engine.answer(number, stage.requests(number, candidates), None, on_batch)
        stage.stats.engine.count(stage.name, [r for r in records.values() if r is not None])
        stage.apply(candidates, records)
        rows = []
        for example, candidate in zip(chunk, candidates, strict=True):
            judgement, reason = candidate.judgements[0]
            rows.append(self._row(example, quality_values(judgement, reason,
                                                          judge=self.prepared.model.name)))
        return rows

    @property
    def rewarding(self) -> bool:
        """Whether a reward model scores instead of the judge."""
        return self.config.quality.reward_model is not None

    def _start_reward(self) -> Engine:
        from .engines.reward import RewardEngine, RewardScorer

        return RewardEngine(RewardScorer(self.prepared.model.path, self.config.engine,
                                         self.config.seed))

    def _reward_chunk(self, engine: Any, stats: Any, number: int, chunk: list[dict[str, Any]],
                      on_batch: Any) -> list[dict[str, Any]]:
        """The rows of one chunk scored by the reward model (``quality_reward``)."""
        from .engines.base import PROMPT_TOO_LONG, Request, Sampling
        from .engines.reward import REWARD_STAGE, reward_prompt
        from .quality import column

        keys = [example_key(e["instruction"], e["input"], e["output"]) for e in chunk]
        requests = [Request(reward_prompt((e["instruction"], e["input"], e["output"])),
                            Sampling(0.0, 1.0, 1), None, False, REWARD_STAGE, key)
                    for e, key in zip(chunk, keys, strict=True)]
        records = engine.answer(number, list({r.key: r for r in requests}.values()), None,
                                on_batch)
        stats.engine.count(REWARD_STAGE, [r for r in records.values() if r is not None])
        rows = []
        for example, key in zip(chunk, keys, strict=True):
            record = records.get(key)
            reward = (float(record.text) if record is not None
                      and record.finish_reason != PROMPT_TOO_LONG else None)
            reason = None if reward is not None else (
                PROMPT_TOO_LONG if record is not None else "not_judged")
            stats.judged += 1
            stats.judge_failures[reason or "ok"] += 1
            values = quality_values(None, reason, judge=self.prepared.model.name)
            values[column("reward")] = reward
            rows.append(self._row(example, values))
        return rows

    @staticmethod
    def _row(example: dict[str, Any], quality: dict[str, Any]) -> dict[str, Any]:
        """A shard row: the example, its input's own columns, and its quality columns."""
        return {
            "id": example["id"], "task_id": example["task_id"],
            "instruction": example["instruction"], "input": example["input"],
            "output": example["output"],
            "messages": messages_for(example["instruction"], example["input"],
                                     example["output"]),
            "is_classification": example.get("is_classification"),
            "model": example.get("model"),
            "round": int(example["round"]) if example.get("round") is not None else None,
            "prompt_task_ids": list(example.get("prompt_task_ids") or []),
            "nearest_instruction": example.get("nearest_instruction"),
            "nearest_rouge_l": example.get("nearest_rouge_l"),
            **quality,
        }

    def select(self, rows: list[dict[str, Any]], stats: Any) -> list[dict[str, Any]]:
        """The rows that become shards: those passing the cuts, then the budget."""
        quality = self.config.quality
        cuts = quality.cuts()
        kept = [row for row in rows if passes_cuts(row, cuts)]
        stats.rejections["low_quality"] = len(rows) - len(kept)
        if quality.keep_best is None:
            return kept
        from .selection import select_best

        selection = select_best(kept, quality.keep_best, quality.diversity_threshold,
                                self.config.filters.rouge_tokenizer,
                                by="reward" if self.rewarding else "overall")
        stats.selection = selection.to_json_dict()
        return [dict(row) for row in selection.rows]

    def manifest(self, shards: list[ShardInfo], stats: Any, status: str,
                 startup_seconds: float, pending: int = 0) -> Manifest:
        """The manifest of the score run (the same shape as a ``generate`` run's)."""
        in_shards = sum(s.rows for s in shards)
        model = self.prepared.model
        info: dict[str, Any] = {"backend": self.config.engine.backend}
        if self._engine is not None:
            info.update(self._engine.describe())
        return Manifest.model_validate({
            "format": MANIFEST_FORMAT, "status": status, "created": self.created,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards],
            "rows": in_shards, "rows_pending": pending, "tasks": in_shards,
            "rounds": stats.rounds, "ledger": LEDGER_DIR, "identity": self.identity(),
            "model": {"name": model.name, "path": model.path, "source": model.source,
                      "gguf_sha256": model.sha256},
            "prompts": str(self.prompts.directory), "config": self.config.to_json_dict(),
            "versions": package_versions(), "stats": stats.to_json_dict(),
            "engine_startup_seconds": round(startup_seconds, 3), "backend": info,
            "throughput": throughput(stats, startup_seconds),
            "scored_from": str(self.source),
        })


def _plain(row: dict[Any, Any]) -> dict[str, Any]:
    """A frame row with numpy arrays and NaN turned into lists and None."""
    import math

    out = {}
    for key, value in row.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[str(key)] = value
    return out
