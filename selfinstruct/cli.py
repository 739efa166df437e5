"""The ``selfinstruct`` command line.

Start-up stays cheap: this module imports only click at load time; every command
imports what it needs (pandas, pyarrow, vLLM) when it runs, so ``selfinstruct
--help`` never loads torch or vLLM.

User mistakes (bad seeds, config, model path, occupied output directory) exit
with status 2 and one line on stderr; nothing is written to the output directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from . import __version__

EXIT_USAGE = 2


class UserError(click.ClickException):
    """A user mistake: printed as ``Error: <one line>``, exit status 2."""

    exit_code = EXIT_USAGE


# CLI option -> dotted key of selfinstruct.config.Config
GENERATE_OPTIONS: dict[str, str] = {
    "model": "model",
    "seeds": "seeds",
    "num_instructions": "num_instructions",
    "output": "output",
    "seed": "seed",
    "prompts_dir": "prompts",
    "prompts_per_round": "generation.prompts_per_round",
    "prompt_tasks": "generation.prompt_tasks",
    "prompt_human_tasks": "generation.prompt_human_tasks",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "max_tokens": "generation.max_tokens",
    "max_rounds": "generation.max_rounds",
    "max_instances": "instances.max_instances",
    "rouge_threshold": "filters.rouge_threshold",
    "rouge_tokenizer": "filters.rouge_tokenizer",
    "min_words": "filters.min_words",
    "max_words": "filters.max_words",
    "reject_non_ascii_start": "filters.reject_non_ascii_start",
    "shard_size": "shards.shard_size",
    "dtype": "engine.dtype",
    "max_model_len": "engine.max_model_len",
    "chat_template": "engine.chat_template",
}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="selfinstruct")
def main() -> None:
    """Generate instruction-tuning data from seed tasks with Self-Instruct on vLLM."""


@main.command()
@click.option("--seeds", type=click.Path(path_type=Path), default=None,
              help="Seed tasks: Self-Instruct JSONL, Alpaca JSON/JSONL, Parquet or CSV, "
                   "or a directory of them.  [default: bundled seeds/]")
@click.option("--model", default=None,
              help="Hugging Face id, local model directory, or .gguf file.  "
                   "[default: embedded SmolLM2-135M-Instruct]")
@click.option("--num-instructions", "-n", type=int, default=None,
              help="New tasks (with instances) to produce.  [default: 100]")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Output directory for shards and manifest.  [default: outputs/run]")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file with any configuration field; flags override it.")
@click.option("--seed", type=int, default=None, help="Run seed.  [default: 0]")
@click.option("--prompts", "prompts_dir", type=click.Path(path_type=Path), default=None,
              help="Directory of prompt templates.  [default: bundled prompts/]")
@click.option("--prompts-per-round", type=int, default=None,
              help="Instruction-generation prompts sent at once per round.  [default: 64]")
@click.option("--prompt-tasks", type=int, default=None,
              help="Pool tasks shown in each prompt.  [default: 8]")
@click.option("--prompt-human-tasks", type=int, default=None,
              help="Of which human seed tasks.  [default: 6]")
@click.option("--temperature", type=float, default=None,
              help="Instruction sampling temperature.  [default: 0.7]")
@click.option("--top-p", type=float, default=None,
              help="Instruction sampling top-p.  [default: 0.5]")
@click.option("--max-tokens", type=int, default=None,
              help="Output tokens per instruction prompt.  [default: 1024]")
@click.option("--max-rounds", type=int, default=None,
              help="Stop after this many rounds even if short of the target.  [default: 1000]")
@click.option("--max-instances", type=int, default=None,
              help="Instances kept per task at most.  [default: 5]")
@click.option("--rouge-threshold", type=float, default=None,
              help="Drop instructions whose ROUGE-L F1 to the pool exceeds this.  [default: 0.7]")
@click.option("--rouge-tokenizer", type=click.Choice(["rouge", "unicode"]), default=None,
              help="rouge = rouge_score's (Latin only); unicode = any script.  [default: rouge]")
@click.option("--min-words", type=int, default=None, help="Instruction length floor.  [default: 4]")
@click.option("--max-words", type=int, default=None,
              help="Instruction length ceiling.  [default: 150]")
@click.option("--reject-non-ascii-start/--allow-non-ascii-start", default=None,
              help="Drop instructions starting with a non-ASCII character.  [default: reject]")
@click.option("--shard-size", type=int, default=None,
              help="Rows per Parquet shard at most.  [default: 10000]")
@click.option("--dtype", default=None, help="Model dtype for vLLM.  [default: auto]")
@click.option("--max-model-len", type=int, default=None,
              help="Context length for vLLM.  [default: 2048]")
@click.option("--chat-template/--no-chat-template", default=None,
              help="Wrap prompts in the model's chat template.  [default: no]")
def generate(config_file: Path | None, **options: Any) -> None:
    """Bootstrap new (instruction, input, output) examples from seed tasks.

    Runs the Self-Instruct loop (Wang et al. 2023, §2) on an in-process vLLM
    engine and writes Parquet shards and a manifest.json to the output directory.
    """
    from .run import GenerateJob, JobError

    try:
        job = GenerateJob.prepare(config_file, options, GENERATE_OPTIONS)
    except JobError as exc:
        raise UserError(str(exc)) from None
    try:
        job.execute()
    except JobError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("Interrupted: nothing from the unfinished round was kept.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
