"""A ``generate`` job: validate everything, then start the engine, run, write the manifest.

All user input (config, seeds, templates, model path, output directory) is checked
before the output directory is created, so a mistake leaves nothing behind.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config
from .models import ModelError, ResolvedModel, resolve_model
from .prompts import PromptBuilder, PromptError
from .seeds import SeedError, Task, default_seeds_dir, load_seed_tasks, seed_files
from .shards import MANIFEST, ShardWriter, file_digest, write_json

EMPTY_TOKENIZE_WARNING = 0.05
"""Warn when the rouge tokenizer empties more than this fraction of seed instructions."""


class JobError(ValueError):
    """A user mistake found while preparing or running a job (one line)."""


@dataclass
class GenerateJob:
    """A validated ``generate`` job, ready to run.

    Build it with :meth:`prepare`; :meth:`execute` starts the engine and runs.
    """

    config: Config
    seeds_path: Path
    seed_tasks: list[Task]
    prompts: PromptBuilder
    model: ResolvedModel
    warnings: list[str]

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
                line and field where there is one.
        """
        from .dedup import empty_fraction

        overrides = {option_keys[name]: value for name, value in options.items()}
        names = {key: "--" + name.replace("_", "-") for name, key in option_keys.items()}
        try:
            config = load_config(config_file, overrides, names)
            seeds_path = config.seeds or default_seeds_dir()
            seed_tasks = load_seed_tasks(seeds_path)
            prompts = PromptBuilder(config.prompts)
        except (ConfigError, SeedError, PromptError) as exc:
            raise JobError(str(exc)) from None
        _check_output_dir(config.output)
        try:
            model = resolve_model(config.model)
        except ModelError as exc:
            raise JobError(str(exc)) from None
        warnings = []
        if config.filters.rouge_tokenizer == "rouge":
            fraction = empty_fraction([t.instruction for t in seed_tasks], "rouge")
            if fraction > EMPTY_TOKENIZE_WARNING:
                warnings.append(
                    f"{fraction:.0%} of seed instructions have no [a-z0-9] word, so the "
                    "rouge tokenizer makes them empty and ROUGE-L dedup cannot fire on them; "
                    "use --rouge-tokenizer unicode for non-Latin text")
        return cls(config, Path(seeds_path), seed_tasks, prompts, model, warnings)

    def execute(self) -> None:
        """Start the engine, run the loop, write shards and the manifest, print a summary."""
        from .engine import VLLMEngine
        from .pipeline import SelfInstruct
        from .report import RichReporter, console, print_summary

        for warning in self.warnings:
            console.print(f"[yellow]Warning:[/] {warning}")
        config = self.config
        console.print(f"Loading {self.model.name} with vLLM ...")
        started = time.perf_counter()
        try:
            engine = VLLMEngine(self.model.path, self.model.name, config.engine, config.seed)
        except Exception as exc:  # vLLM raises many types; the first line says what failed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise JobError(f"{self.model.path}: the engine could not start: {first}") from None
        startup = time.perf_counter() - started
        try:
            _check_output_dir(config.output)
            config.output.mkdir(parents=True, exist_ok=True)
            writer = ShardWriter(config.output, config.shards.shard_size,
                                 config.shards.compression)
            with RichReporter(config.num_instructions) as reporter:
                loop = SelfInstruct(config, engine, self.prompts, self.seed_tasks, writer,
                                    reporter)
                stats = loop.run()
            shards = writer.close()
            write_json(config.output / MANIFEST,
                       self.manifest(shards, stats.to_json_dict(), engine.version, startup))
        finally:
            engine.close()
        print_summary(stats, config.output, startup)

    def manifest(self, shards, stats: dict[str, Any], engine_version: str,
                 startup_seconds: float) -> dict[str, Any]:
        """The manifest: the commit record of which shards exist, and how they were made."""
        import sys

        versions = {"selfinstruct": __version__, "vllm": engine_version,
                    "python": platform.python_version()}
        for name in ("torch", "transformers"):
            module = sys.modules.get(name)
            if module is not None:
                versions[name] = getattr(module, "__version__", "unknown")
        return {
            "format": "selfinstruct-shards/1",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards],
            "rows": sum(s.rows for s in shards),
            "tasks": stats["tasks_written"],
            "model": {"name": self.model.name, "path": self.model.path,
                      "source": self.model.source, "gguf_sha256": self.model.sha256},
            "seeds": {"path": str(self.seeds_path), "tasks": len(self.seed_tasks),
                      "files": [{"path": str(p), "sha256": file_digest(p)}
                                for p in seed_files(self.seeds_path)]},
            "prompts": str(self.prompts.directory),
            "config": self.config.to_json_dict(),
            "versions": versions,
            "stats": stats,
            "engine_startup_seconds": round(startup_seconds, 3),
        }


def _check_output_dir(output: Path) -> None:
    """Refuse an output directory that is a file or already holds something."""
    if output.exists() and not output.is_dir():
        raise JobError(f"{output}: output path exists and is not a directory")
    if output.is_dir() and any(output.iterdir()):
        hint = "holds a finished run" if (output / MANIFEST).exists() else "is not empty"
        raise JobError(f"{output}: output directory {hint}; choose another --output")
