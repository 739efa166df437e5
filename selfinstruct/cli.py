"""The ``selfinstruct`` command line.

Start-up stays cheap: at load time this module imports click and the
configuration models (:mod:`selfinstruct.config`, pydantic only), whose fields
give the options their defaults, descriptions and choices; every command
imports what it needs (pandas, pyarrow, vLLM) when it runs, so ``selfinstruct
--help`` never loads pandas, torch or vLLM.

User mistakes (bad seeds, config, model path, occupied output directory) exit
with status 2 and one line on stderr; nothing is written to the output directory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .analysis.constants import DEFAULT_MAX_LENGTH, FORMATS, REPORT_FILES
from .config_help import choices_of, config_help, default_of, description_of
from .models import EMBEDDED_NAME

EXIT_USAGE = 2
EXIT_ENGINE = 1
"""The engine failed mid-run (endpoints gone, a request rejected); the run can resume."""


class UserError(click.ClickException):
    """A user mistake: printed as ``Error: <one line>``, exit status 2.

    The message often quotes user data (a path, a field's value, a server's
    answer): it is printed through :func:`~selfinstruct.terminal.terminal_safe`
    with line breaks escaped, so it stays one line and no control character or
    bidi override in it reaches the terminal.
    """

    exit_code = EXIT_USAGE

    def format_message(self) -> str:
        from .terminal import terminal_safe

        return terminal_safe(self.message, newlines=False)


class _Group(click.Group):
    """The command group: SIGTERM stops any command like Ctrl-C, with exit status 143,
    and click's own error messages (which quote the command line) are terminal-safe.

    A command with a stop message of its own (``generate``, ``refilter``) catches
    :class:`~selfinstruct.signals.Terminated` itself; for the others one line
    ``Stopped (SIGTERM).`` is printed here.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from .signals import EXIT_SIGTERM, Terminated, graceful_stop
        from .terminal import terminal_safe

        with graceful_stop():
            try:
                return super().invoke(ctx)
            except click.ClickException as exc:
                if not isinstance(exc, UserError):
                    # click declares ``message`` Final; it is cleaned in place so the
                    # exception (its type, context and exit code) stays click's own.
                    exc.message = terminal_safe(exc.message)  # type: ignore[misc]
                raise
            except Terminated:
                click.echo("Stopped (SIGTERM).", err=True)
                sys.exit(EXIT_SIGTERM)


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Click callback refusing nan and ±inf for a float option, as a one-line
    :class:`UserError` (``click.FloatRange`` lets nan through: every comparison
    with it is false). None passes."""
    import math

    if value is not None and not math.isfinite(value):
        raise UserError(f"option {param.opts[0]}: {value!r} is not a finite number")
    return value


# CLI option -> dotted key of selfinstruct.config.Config
GENERATE_OPTIONS: dict[str, str] = {
    "recipe": "recipe",
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
    "presence_penalty": "generation.presence_penalty",
    "stop": "generation.stop",
    "max_tokens": "generation.max_tokens",
    "max_rounds": "generation.max_rounds",
    "pipeline_depth": "generation.pipeline_depth",
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
    "backend": "engine.backend",
    "base_url": "engine.base_urls",
    "max_in_flight": "engine.max_in_flight",
    "request_timeout": "engine.request_timeout",
    "max_retries": "engine.max_retries",
    "api_key_env": "engine.api_key_env",
    "ray_address": "engine.ray_address",
    "ray_replicas": "engine.ray_replicas",
    "judge": "quality.judge",
    "judge_model": "quality.judge_model",
    "judge_base_url": "quality.judge_base_urls",
    "keep_best": "quality.keep_best",
    "diversity_threshold": "quality.diversity_threshold",
    "decontaminate_against": "decontamination.against",
}

DECONTAMINATE_HELP = ("An evaluation set no instruction or example may repeat: a local record "
                      "file or save_to_disk directory, the fields holding its text, and a name "
                      "(default: the file's stem). Repeatable.")

QUALITY_CUTS = {"overall": "quality.min_overall", "instruction": "quality.min_instruction",
                "input": "quality.min_input", "output": "quality.min_output"}
"""``--min-quality [QUESTION=]SCORE`` -> the config key of that cut."""


def quality_cuts(values: tuple[str, ...]) -> dict[str, float]:
    """``--min-quality`` values (``4``, ``output=3``) as config keys -> lowest score kept.

    A bare score is the overall cut; ``QUESTION=SCORE`` cuts one question
    (instruction, input, output) or the overall score.

    Raises:
        UserError: a value that is not ``[QUESTION=]NUMBER`` with a known question
            and a finite number.
    """
    import math

    cuts = {}
    for value in values:
        name, _, number = value.rpartition("=")
        name = name.strip().lower() or "overall"
        if name not in QUALITY_CUTS:
            raise UserError(f"option --min-quality: {value!r}: the question must be one of "
                            f"{', '.join(QUALITY_CUTS)}")
        try:
            score = float(number)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise UserError(f"option --min-quality: {value!r}: not [QUESTION=]NUMBER "
                            "(e.g. 4 or output=3)")
        cuts[QUALITY_CUTS[name]] = score
    return cuts


def quality_options(f: Any) -> Any:
    """The selection options generate and refilter share: cuts, budget, diversity."""
    for option in reversed((
        click.option("--min-quality", multiple=True, metavar="[QUESTION=]SCORE",
                     help="Drop examples scored below SCORE overall, or on QUESTION "
                          "(instruction, input, output, overall), with reason low_quality. "
                          "Repeatable. Needs --judge."),
        click.option("--keep-best", type=float, default=None, callback=finite,
                     help=config_help("quality.keep_best", "Keep the N best-scored examples "
                                      "(N >= 1), or that fraction (0 < N < 1), skipping "
                                      "near-duplicate instructions. Needs --judge.",
                                      "all")),
        click.option("--diversity-threshold", type=float, default=None, callback=finite,
                     help=config_help("quality.diversity_threshold")),
    )):
        f = option(f)
    return f


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="selfinstruct")
def main() -> None:
    """Generate instruction-tuning data from seed tasks with Self-Instruct on vLLM."""


@main.command()
@click.option("--recipe", type=click.Choice(choices_of("recipe")), default=None,
              help=config_help("recipe", "self-instruct: the paper's three calls per task "
                               "(instructions, classification, instances); alpaca: Stanford "
                               "Alpaca's one call writing up to 16 whole tasks from 3 seeds, "
                               "with its published settings as the defaults."))
@click.option("--seeds", type=click.Path(path_type=Path), default=None,
              help=config_help("seeds", "Seed tasks: Self-Instruct JSONL, Alpaca JSON/JSONL/"
                               "NDJSON, Parquet, CSV, a datasets save_to_disk directory, "
                               "or a directory of such files.", "bundled seeds/"))
@click.option("--model", default=None,
              help=config_help("model", "Hugging Face id, local model directory, or .gguf file.",
                               f"embedded {EMBEDDED_NAME}"))
@click.option("--num-instructions", "-n", type=int, default=None,
              help=config_help("num_instructions"))
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help=config_help("output"))
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file with any configuration field; flags override it.")
@click.option("--seed", type=int, default=None, help=config_help("seed"))
@click.option("--prompts", "prompts_dir", type=click.Path(path_type=Path), default=None,
              help=config_help("prompts", "Directory of prompt templates.", "bundled prompts/"))
@click.option("--prompts-per-round", type=int, default=None,
              help=config_help("generation.prompts_per_round"))
@click.option("--prompt-tasks", type=int, default=None,
              help=config_help("generation.prompt_tasks"))
@click.option("--prompt-human-tasks", type=int, default=None,
              help=config_help("generation.prompt_human_tasks"))
@click.option("--temperature", type=float, default=None,
              help=config_help("generation.temperature"))
@click.option("--top-p", type=float, default=None, help=config_help("generation.top_p"))
@click.option("--presence-penalty", type=float, default=None,
              help=config_help("generation.presence_penalty"))
@click.option("--stop", multiple=True, metavar="TEXT",
              help=config_help("generation.stop", "Stop string of instruction generation, "
                               "besides the one before list item "
                               f"{default_of('generation.max_list_items') + 1}. Repeatable; "
                               "replaces the default list."))
@click.option("--max-tokens", type=int, default=None,
              help=config_help("generation.max_tokens"))
@click.option("--max-rounds", type=int, default=None,
              help=config_help("generation.max_rounds"))
@click.option("--pipeline-depth", type=int, default=None,
              help=config_help("generation.pipeline_depth"))
@click.option("--max-instances", type=int, default=None,
              help=config_help("instances.max_instances"))
@click.option("--rouge-threshold", type=float, default=None,
              help=config_help("filters.rouge_threshold"))
@click.option("--rouge-tokenizer", type=click.Choice(choices_of("filters.rouge_tokenizer")),
              default=None, help=config_help("filters.rouge_tokenizer"))
@click.option("--min-words", type=int, default=None, help=config_help("filters.min_words"))
@click.option("--max-words", type=int, default=None, help=config_help("filters.max_words"))
@click.option("--reject-non-ascii-start/--allow-non-ascii-start", default=None,
              help=config_help("filters.reject_non_ascii_start", default=(
                  "reject" if default_of("filters.reject_non_ascii_start") else "allow")))
@click.option("--shard-size", type=int, default=None, help=config_help("shards.shard_size"))
@click.option("--dtype", default=None,
              help=config_help("engine.dtype", "Model weights' dtype for vLLM: "
                               f"{', '.join(choices_of('engine.dtype'))}."))
@click.option("--max-model-len", type=int, default=None,
              help=config_help("engine.max_model_len", "Context length for vLLM, prompt and "
                               "output tokens."))
@click.option("--chat-template/--no-chat-template", default=None,
              help=config_help("engine.chat_template", default=(
                  "yes" if default_of("engine.chat_template") else "no")))
@click.option("--backend", type=click.Choice(choices_of("engine.backend")), default=None,
              help=config_help("engine.backend", "vllm: in-process engine; http: "
                               "OpenAI-compatible servers (--base-url); ray: vLLM replicas "
                               "on a Ray cluster, started once per run.",
                               f"{default_of('engine.backend')}, or http with --base-url"))
@click.option("--base-url", multiple=True, metavar="URL",
              help="OpenAI-compatible endpoint, e.g. http://gpu1:8000/v1 (`vllm serve`). "
                   "Repeatable: requests are spread over all of them. --model is then the "
                   "served model name.  [default: the one model the servers serve]")
@click.option("--max-in-flight", type=int, default=None,
              help=config_help("engine.max_in_flight"))
@click.option("--request-timeout", type=float, default=None,
              help=config_help("engine.request_timeout"))
@click.option("--max-retries", type=int, default=None,
              help=config_help("engine.max_retries"))
@click.option("--api-key-env", default=None, metavar="VAR",
              help=config_help("engine.api_key_env", "Environment variable holding the "
                               "endpoints' API key."))
@click.option("--ray-address", default=None,
              help=config_help("engine.ray_address", "Ray cluster address for --backend ray.",
                               "$RAY_ADDRESS, the job's cluster, or a local Ray"))
@click.option("--ray-replicas", type=int, default=None,
              help=config_help("engine.ray_replicas", "vLLM replicas for --backend ray, "
                               "engine.tensor_parallel_size GPUs each.",
                               "one per tensor_parallel_size GPUs; 1 without GPUs"))
@click.option("--judge/--no-judge", default=None,
              help=config_help("quality.judge", "Score every example with a judge model "
                               "(Self-Instruct §3.3's three questions and an overall score).",
                               "no"))
@click.option("--judge-model", default=None,
              help=config_help("quality.judge_model", "Judge model: Hugging Face id, local "
                               "directory or .gguf; with --judge-base-url, the served name.",
                               "the generating model"))
@click.option("--judge-base-url", multiple=True, metavar="URL",
              help="OpenAI-compatible endpoint serving the judge. Repeatable.  "
                   "[default: judge with the generating engine]")
@click.option("--decontaminate-against", multiple=True, metavar="[NAME=]PATH[:FIELD,...]",
              help=DECONTAMINATE_HELP)
@quality_options
def generate(config_file: Path | None, min_quality: tuple[str, ...], **options: Any) -> None:
    """Bootstrap new (instruction, input, output) examples from seed tasks.

    Runs the Self-Instruct loop (Wang et al. 2023, §2), or Stanford Alpaca's
    variant of it (--recipe alpaca), on an in-process vLLM engine, on
    OpenAI-compatible servers (--base-url) or on a Ray cluster (--backend ray),
    and writes Parquet shards and a manifest.json to the output directory.
    """
    from .engines.base import EngineError
    from .run import GenerateJob, JobError
    from .signals import EXIT_SIGINT, EXIT_SIGTERM, Terminated
    from .terminal import terminal_safe

    options["base_url"] = list(options["base_url"]) or None
    options["judge_base_url"] = list(options["judge_base_url"]) or None
    options["stop"] = list(options["stop"]) or None
    options["decontaminate_against"] = list(options["decontaminate_against"]) or None
    keys = dict(GENERATE_OPTIONS)
    for key, score in quality_cuts(min_quality).items():
        options[f"min_quality:{key}"], keys[f"min_quality:{key}"] = score, key
    try:
        job = GenerateJob.prepare(config_file, options, keys)
    except JobError as exc:
        raise UserError(str(exc)) from None
    try:
        job.execute()
    except JobError as exc:
        raise UserError(str(exc)) from None
    except EngineError as exc:
        click.echo(terminal_safe(
            f"Error: {exc}. The run stopped; its checkpoint in {job.config.output} "
            "is intact (finished stages are saved): run the same command again to "
            "resume.", newlines=False), err=True)
        sys.exit(EXIT_ENGINE)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): see selfinstruct.signals
        how = "Stopped (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
        click.echo(terminal_safe(
            f"{how}. Committed rounds and finished stages are saved in "
            f"{job.config.output}; run the same command again to resume.", newlines=False),
            err=True)
        sys.exit(EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT)


DROP_REVIEWED_HELP = ("Drop the examples a reviewer answered \"no\" to on any of Self-Instruct "
                      "§3.3's three questions (RUN/review/labels-*.parquet, written by "
                      "`selfinstruct review`),")

RUN_VALUE = "the run's"
"""The default of every ``refilter`` setting: the value the run recorded."""


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="New directory for the re-derived shards, ledger and manifest.")
@click.option("--rouge-threshold", type=float, default=None,
              help=config_help("filters.rouge_threshold", default=RUN_VALUE))
@click.option("--rouge-tokenizer", type=click.Choice(choices_of("filters.rouge_tokenizer")),
              default=None, help=config_help("filters.rouge_tokenizer", default=RUN_VALUE))
@click.option("--min-words", type=int, default=None,
              help=config_help("filters.min_words", default=RUN_VALUE))
@click.option("--max-words", type=int, default=None,
              help=config_help("filters.max_words", default=RUN_VALUE))
@click.option("--reject-non-ascii-start/--allow-non-ascii-start", default=None,
              help=config_help("filters.reject_non_ascii_start", default=RUN_VALUE))
@click.option("--max-instances", type=int, default=None,
              help=config_help("instances.max_instances", default=RUN_VALUE))
@click.option("--near-duplicate-threshold", type=float, default=None,
              help=config_help("instances.near_duplicate_threshold",
                               "Drop an example whose instruction + input scores at "
                               "least this (rapidfuzz ratio, 0-100) against another "
                               "task's.", RUN_VALUE))
@quality_options
@click.option("--seeds", type=click.Path(path_type=Path), default=None,
              help="Where the run's seed tasks are now, if not at the recorded path; "
                   "their sha256 must equal the recorded ones.")
@click.option("--prompts", "prompts_dir", type=click.Path(path_type=Path), default=None,
              help="Where the run's prompt templates are now, likewise verified.  "
                   "[default: the recorded directory, else the bundled templates]")
@click.option("--drop-reviewed-invalid", is_flag=True,
              help=DROP_REVIEWED_HELP + " with reason reviewed_invalid; the manifest records "
                   "the labels files and the counts.")
@click.option("--decontaminate-against", multiple=True, metavar="[NAME=]PATH[:FIELD,...]",
              help=DECONTAMINATE_HELP + "  [default: the run's]")
def refilter(run_dir: Path, output: Path, seeds: Path | None, prompts_dir: Path | None,
             min_quality: tuple[str, ...], drop_reviewed_invalid: bool,
             **options: Any) -> None:
    """Re-derive a run's kept set under new filter settings, with no model call.

    Replays RUN_DIR's ledger (every recorded completion) through the filters
    with the given settings and writes new shards and a manifest to --output.
    Settings not given keep the run's values; with none given the result
    equals the original run.
    """
    from .progress import console
    from .run import JobError, refilter as run_refilter
    from .signals import EXIT_SIGINT, EXIT_SIGTERM, Terminated
    from .terminal import rich_safe, terminal_safe

    options["decontaminate_against"] = list(options["decontaminate_against"]) or None
    keys = {name: REFILTER_OPTIONS[name] for name in options}
    names = {key: "--" + name.replace("_", "-") for name, key in keys.items()}
    for key, score in quality_cuts(min_quality).items():
        options[f"min_quality:{key}"], keys[f"min_quality:{key}"] = score, key
        names[key] = "--min-quality"
    absent = not output.exists() and not output.is_symlink()
    try:
        occupied = not absent and (output.is_symlink() or not output.is_dir()
                                   or any(output.iterdir()))
    except OSError:  # unreadable: never touched on interrupt (refilter refuses it anyway)
        occupied = True
    try:
        stats, warnings = run_refilter(run_dir, output,
                                       {keys[n]: v for n, v in options.items()}, names,
                                       seeds=seeds, prompts_dir=prompts_dir,
                                       drop_reviewed_invalid=drop_reviewed_invalid)
    except JobError as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        how = "Stopped (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
        if not occupied:  # everything in it was written by this call: remove it
            _remove_partial_output(output, absent)
        click.echo(terminal_safe(f"{how}; no output was kept in {output}: run the same "
                                 "command again.", newlines=False), err=True)
        sys.exit(EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT)
    for warning in warnings:
        console.print(f"[yellow]Warning:[/] {rich_safe(warning)}", highlight=False)
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(stats["rejections"].items(),
                                                         key=lambda kv: -kv[1])[:6])
    console.print(f"{stats['tasks_written']} tasks, {stats['rows_written']} rows kept "
                  f"from {stats['rounds']} recorded rounds; rejected: {rich_safe(rejected)}")
    if "review" in stats:
        click.echo(terminal_safe(reviewed_line(stats["review"])))
    click.echo(terminal_safe(f"Shards and manifest in {output}/"))


def reviewed_line(record: dict[str, Any]) -> str:
    """One line on what ``--drop-reviewed-invalid`` dropped, from its record
    (:meth:`~selfinstruct.review.drop.ReviewedInvalid.record`)."""
    tasks = record.get("tasks_dropped", 0)
    whole = f", {tasks} task{'s' * (tasks != 1)} left with none" if tasks else ""
    return (f"--drop-reviewed-invalid: dropped {record['rows_dropped']} "
            f"row{'s' * (record['rows_dropped'] != 1)}{whole} (reviewed_invalid: "
            f"reviewers {', '.join(record['reviewers'])} answered \"no\" about "
            f"{record['invalid_examples']} of the {record['labelled']} examples they labelled)")


def _remove_partial_output(output: Path, absent: bool) -> None:
    """Remove what an interrupted ``refilter`` wrote to ``output``, which was ``absent``
    or an empty directory when it started (an empty directory is kept)."""
    import shutil

    if not output.is_dir() or output.is_symlink():
        return
    for child in output.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    if absent:
        try:
            output.rmdir()
        except OSError:
            pass


REFILTER_OPTIONS = {
    "rouge_threshold": "filters.rouge_threshold",
    "rouge_tokenizer": "filters.rouge_tokenizer",
    "min_words": "filters.min_words",
    "max_words": "filters.max_words",
    "reject_non_ascii_start": "filters.reject_non_ascii_start",
    "max_instances": "instances.max_instances",
    "near_duplicate_threshold": "instances.near_duplicate_threshold",
    "keep_best": "quality.keep_best",
    "diversity_threshold": "quality.diversity_threshold",
    "decontaminate_against": "decontamination.against",
}


SCORE_OPTIONS: dict[str, str] = {
    "model": "model",
    "output": "output",
    "seed": "seed",
    "prompts_dir": "prompts",
    "rubric": "quality.rubric",
    "max_tokens": "quality.max_tokens",
    "structured_output": "quality.structured_output",
    "keep_best": "quality.keep_best",
    "diversity_threshold": "quality.diversity_threshold",
    "dtype": "engine.dtype",
    "max_model_len": "engine.max_model_len",
    "backend": "engine.backend",
    "base_url": "engine.base_urls",
    "api_key_env": "engine.api_key_env",
    "reward_model": "quality.reward_model",
    "min_reward": "quality.min_reward",
}


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for the judged shards, ledger and manifest (running the same "
                   "command again resumes, or re-cuts with no model call).")
@click.option("--model", default=None,
              help=config_help("model", "The judge: Hugging Face id, local model directory or "
                               ".gguf; with --base-url, the served model name.",
                               f"embedded {EMBEDDED_NAME}"))
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file with any configuration field ([quality], [engine]); flags "
                   "override it.")
@click.option("--base-url", multiple=True, metavar="URL",
              help="OpenAI-compatible endpoint serving the judge. Repeatable.")
@click.option("--backend", type=click.Choice(choices_of("engine.backend")), default=None,
              help=config_help("engine.backend", "vllm: in-process engine; http: "
                               "OpenAI-compatible servers (--base-url); ray: vLLM replicas on Ray.",
                               f"{default_of('engine.backend')}, or http with --base-url"))
@click.option("--api-key-env", default=None, metavar="VAR",
              help=config_help("engine.api_key_env"))
@click.option("--prompts", "prompts_dir", type=click.Path(path_type=Path), default=None,
              help=config_help("prompts", "Directory holding the rubric template.",
                               "bundled prompts/"))
@click.option("--rubric", default=None, help=config_help("quality.rubric"))
@click.option("--reward-model", default=None, metavar="MODEL",
              help=config_help("quality.reward_model", "Score with this sequence-"
                               "classification reward model (local directory or HF id) "
                               "through vLLM's pooling runner instead of the judge: "
                               "quality_reward, higher is better; --keep-best ranks by it.",
                               "none: the judge"))
@click.option("--min-reward", type=float, default=None, callback=finite,
              help=config_help("quality.min_reward", default="none"))
@click.option("--max-tokens", type=int, default=None, help=config_help("quality.max_tokens"))
@click.option("--structured-output/--no-structured-output", default=None,
              help=config_help("quality.structured_output", default="yes"))
@click.option("--dtype", default=None, help=config_help("engine.dtype"))
@click.option("--max-model-len", type=int, default=None,
              help=config_help("engine.max_model_len"))
@click.option("--seed", type=int, default=None, help=config_help("seed"))
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Judge only the first N examples.  [default: all]")
@click.option("--chunk-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Examples per ledger round: a crash loses at most one chunk's answers.")
@quality_options
def score(input_path: Path, config_file: Path | None, limit: int | None, chunk_size: int,
          min_quality: tuple[str, ...], **options: Any) -> None:
    """Judge every example of a data set with a model, and keep the best.

    INPUT is anything `inspect` reads: a `generate` run, the Alpaca JSON, JSONL,
    Parquet or CSV records, a save_to_disk directory. Each example gets the
    judge's scores on Self-Instruct §3.3's three questions (instruction valid,
    input appropriate, output correct) and an overall score, with rationales;
    --min-quality and --keep-best choose which become shards.
    """
    from .engines.base import EngineError
    from .run import JobError
    from .scoring import ScoreJob
    from .signals import EXIT_SIGINT, EXIT_SIGTERM, Terminated
    from .terminal import terminal_safe

    options["base_url"] = list(options["base_url"]) or None
    keys = dict(SCORE_OPTIONS)
    for key, value in quality_cuts(min_quality).items():
        options[f"min_quality:{key}"], keys[f"min_quality:{key}"] = value, key
    try:
        job = ScoreJob.prepare(input_path, config_file, options, keys, chunk_size=chunk_size,
                               limit=limit)
        stats = job.execute()
    except JobError as exc:
        raise UserError(str(exc)) from None
    except EngineError as exc:
        click.echo(terminal_safe(
            f"Error: {exc}. Judged chunks are saved in {options['output']}: run the same "
            "command again to resume.", newlines=False), err=True)
        sys.exit(EXIT_ENGINE)
    except KeyboardInterrupt as exc:
        how = "Stopped (SIGTERM)" if isinstance(exc, Terminated) else "Interrupted"
        click.echo(terminal_safe(
            f"{how}. Judged chunks are saved in {options['output']}; run the same command "
            "again to resume.", newlines=False), err=True)
        sys.exit(EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT)
    verdicts = stats.get("quality", {}).get("verdicts", {})
    missing = sum(verdicts.values()) - verdicts.get("ok", 0)
    counts = (f"scored ({verdicts.get('ok', 0)} rewards, {missing} without)"
              if options.get("reward_model") else
              f"judged ({verdicts.get('ok', 0)} verdicts, {missing} unparseable)")
    click.echo(terminal_safe(
        f"{stats.get('quality', {}).get('judged', 0)} examples {counts}; "
        f"{stats['rows_written']} rows kept -> {options['output']}/"))


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--field", default="instruction", show_default=True,
              help="Text column to deduplicate on.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0),
              default=default_of("filters.rouge_threshold"), show_default=True,
              callback=finite,
              help="Drop a row when its ROUGE-L F1 to an earlier kept row exceeds this.")
@click.option("--tokenizer", type=click.Choice(choices_of("filters.rouge_tokenizer")),
              default=default_of("filters.rouge_tokenizer"), show_default=True,
              help=description_of("filters.rouge_tokenizer"))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="File for the kept rows, in the format of its extension (.parquet, .jsonl, "
                   ".ndjson or .json); dropped rows go to <stem>.dropped<ext> beside it.")
def dedup(input_path: Path, field: str, threshold: float, tokenizer: str, output: Path) -> None:
    """Deduplicate a dataset (JSON, JSONL, NDJSON, Parquet, CSV, save_to_disk) by ROUGE-L, exactly.

    Keeps row i iff its ROUGE-L F1 against every earlier kept row is at most
    the threshold (the ROUGE-L filter of Self-Instruct §2.2, "Filtering and
    Postprocessing"), in input order. Dropped rows are written
    with nearest_index, nearest_text and rouge_l columns. INPUT may be a directory: its
    record files are read in name order. The output must not be (or lie inside) INPUT.
    """
    from .dedup import DedupInputError, dedup_file
    from .safety import OutputPathError
    from .terminal import terminal_safe

    try:
        result = dedup_file(input_path, field, output, threshold=threshold, tokenizer=tokenizer)
    except (DedupInputError, OutputPathError) as exc:
        raise UserError(str(exc)) from None
    click.echo(
        f"{result['input']} rows: kept {result['kept']}, dropped {result['dropped']} "
        f"(ROUGE-L > {threshold}, {tokenizer} tokenizer) in {result['seconds']:.2f} s "
        f"(dedup {result['dedup_seconds']:.2f} s)")
    click.echo(terminal_safe(f"kept    -> {result['output']}"))
    click.echo(terminal_safe(f"dropped -> {result['dropped_output']}"))


@main.command("inspect")
@click.argument("run_path", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--seeds", type=click.Path(path_type=Path), default=None,
              help="Seed tasks for the ROUGE-L overlap.  [default: the run's seeds, from "
                   "manifest.json; none for a plain file]")
@click.option("--tokenizer", default=None,
              help="Local tokenizer or model directory for lengths in model tokens, or 'none' "
                   "for words only.  [default: the run's model when it is on disk]")
@click.option("--sample", type=click.IntRange(min=0), default=3, show_default=True,
              help="Rows to show (drawn with a fixed seed).")
@click.option("--where", multiple=True, metavar="EXPR",
              help="Filter the sample rows: COLUMN OP VALUE, OP one of = != < <= > >= ~ "
                   "(~: case-insensitive regex). Repeatable; all must hold. "
                   "E.g. --where 'round>=2' --where 'instruction~poem'.")
@click.option("--json", "as_json", is_flag=True,
              help="Print every statistic as one JSON object on stdout instead of tables.")
@click.option("--report", type=click.Path(path_type=Path), default=None,
              help="Also write PNG figures, a self-contained index.html and stats.json "
                   "to this directory (not RUN, nor inside it).")
@click.option("--reference", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="A dataset to compare RUN with, read as RUN is (e.g. "
                   "../shared/data/alpaca_data.json): input share, lengths and leading "
                   "verbs on both sides, with their differences.")
def inspect_run(run_path: Path, seeds: Path | None, tokenizer: str | None, sample: int,
                where: tuple[str, ...], as_json: bool, report: Path | None,
                reference: Path | None) -> None:
    """Statistics of a run, or of an Alpaca-style dataset file.

    RUN is a `generate` output directory, or records of instruction/input/output
    (a JSON, JSONL, NDJSON, Parquet or CSV file, a directory of them, or a
    datasets save_to_disk directory). Shows counts per stage, rejections by
    reason, per-round counts, the classification share, lengths in words and
    model tokens, each instruction's ROUGE-L to its nearest seed and the
    commonest leading verbs with their objects (Self-Instruct §3.2, Figures
    3-5), and sample rows. With --reference, the same measures of another
    dataset beside the run's ("Compared with NAME").
    """
    import json

    from .analysis.loading import InspectError, load_run
    from .analysis.report import write_report
    from .analysis.sources import resolve_seeds, resolve_tokenizer
    from .analysis.stats import collect_statistics
    from .analysis.tables import render_console
    from .safety import (OutputPathError, check_not_in_run, check_output_apart,
                         check_writable_dir)
    from .terminal import terminal_safe

    if report is not None:  # before any work: the report goes nowhere near the inputs
        try:
            check_writable_dir(report, "--report")
            check_output_apart(report, {"RUN": run_path, "--seeds": seeds,
                                        "--reference": reference}, "--report",
                               writes=REPORT_FILES)
            check_not_in_run(report, "--report")
        except OutputPathError as exc:
            raise UserError(str(exc)) from None
    try:
        run = load_run(run_path)
    except InspectError as exc:
        raise UserError(str(exc)) from None
    try:
        reference_data = load_run(reference) if reference is not None else None
    except InspectError as exc:
        raise UserError(f"--reference: {exc}") from None
    try:
        stats = collect_statistics(run, resolve_seeds(run, seeds),
                                   resolve_tokenizer(run, tokenizer), sample=sample, where=where,
                                   reference=reference_data)
    except InspectError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        # json.dumps escapes C0 controls; terminal_safe escapes the C1 controls, DEL,
        # bidi overrides and lone surrogates it leaves raw, as JSON \u escapes
        click.echo(terminal_safe(json.dumps(stats, indent=2, ensure_ascii=False)))
    else:
        render_console(stats)
    if report is not None:
        try:
            written = write_report(stats, report)
        except ImportError:
            raise UserError("--report needs matplotlib (pip install matplotlib)") from None
        except OSError as exc:
            raise UserError(f"{report}: cannot write report: {exc.strerror}") from None
        click.echo(terminal_safe(f"report -> {written['index']}"), err=as_json)


@main.command()
@click.argument("run_path", metavar="RUN", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="alpaca: JSON of instruction/input/output; sharegpt: JSON of conversations "
                   "(from/value); messages: JSONL of chat messages (OpenAI, TRL); parquet: "
                   "Parquet files; datasets: a save_to_disk directory.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=None,
              help="Export directory: the data files and a README.md dataset card.")
@click.option("--system-prompt", default=None, help="System message added to every example.")
@click.option("--train-split", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Fraction of tasks in train; the rest form a test split (deterministic: "
                   "by a hash of each instruction).  [default: train only]")
@click.option("--seeds", type=click.Path(path_type=Path), default=None,
              help="Seed tasks for the card's ROUGE-L overlap.  [default: the run's seeds]")
@click.option("--tokenizer", default=None,
              help="Tokenizer directory for the card's token lengths, or 'none'.  "
                   "[default: the run's model when it is on disk]")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty --output directory.")
@click.option("--push-to-hub", "repo", default=None, metavar="REPO",
              help="Upload the export to this Hugging Face dataset repository "
                   "(needs network and a token).")
@click.option("--private", is_flag=True, help="With --push-to-hub: make a new repository private.")
@click.option("--check-template", "template_model", is_flag=False, flag_value="embedded",
              default=None, metavar="[MODEL]",
              help="Render every example with MODEL's chat template (a local directory, .gguf "
                   "or cached Hub id; without a value: the embedded model) and report examples "
                   "over --max-length tokens and special tokens inside the text. "
                   "Put RUN before it. Exit status 1 when anything is found.")
@click.option("--max-length", type=click.IntRange(min=1), default=None,
              help="Context length for --check-template.  [default: the tokenizer's "
                   f"model_max_length, at most {DEFAULT_MAX_LENGTH}]")
@click.option("--drop-reviewed-invalid", is_flag=True,
              help=DROP_REVIEWED_HELP + " leaving them out of the export; the card says how "
                   "many. RUN must be a run directory.")
def export(run_path: Path, fmt: str | None, output: Path | None, system_prompt: str | None,
           train_split: float | None, seeds: Path | None, tokenizer: str | None,
           overwrite: bool, repo: str | None, private: bool, template_model: str | None,
           max_length: int | None, drop_reviewed_invalid: bool) -> None:
    """Export a run (or Alpaca-style records) for SFT trainers, with a dataset card.

    RUN is a `generate` output directory or records in any format `inspect` reads.

    Writes --format files and a README.md (Hugging Face card metadata, the model,
    seeds, filter settings and the statistics of `inspect`) to --output. With
    --check-template, checks the examples against a chat template first;
    --check-template alone only checks.
    """
    from .analysis.chat_check import check_template, describe_check, resolve_template_model
    from .analysis.export import ExportError, drop_reviewed_invalid as drop_reviewed
    from .analysis.export import export_run, push_to_hub
    from .analysis.loading import InspectError, load_run
    from .analysis.sources import resolve_seeds, resolve_tokenizer
    from .analysis.stats import collect_statistics
    from .terminal import terminal_safe

    if fmt is None and template_model is None:
        raise UserError("give --format and --output (or --check-template [MODEL])")
    if fmt is not None and output is None:
        raise UserError("--output is required with --format")
    if fmt is None and (output is not None or repo is not None):
        raise UserError("--format is required with --output and --push-to-hub")
    problems = False
    try:
        run = load_run(run_path)
        reviewed = None
        if drop_reviewed_invalid:
            run, reviewed = drop_reviewed(run)
        if template_model is not None:
            template_tokenizer, name = resolve_template_model(template_model)
            result = check_template(run.frame, template_tokenizer, model=name,
                                    max_length=max_length, system_prompt=system_prompt)
            for line in describe_check(result):
                click.echo(line)
            problems = not result["ok"]
        if fmt is not None and output is not None:  # --format without --output: refused above
            stats = collect_statistics(run, resolve_seeds(run, seeds),
                                       resolve_tokenizer(run, tokenizer))
            written = export_run(run, fmt, output, stats=stats, system_prompt=system_prompt,
                                 train_split=train_split, overwrite=overwrite,
                                 reviewed=reviewed)
            splits = ", ".join(f"{name} {rows} rows ({written.files[name]})"
                               for name, rows in written.rows.items())
            click.echo(terminal_safe(f"{fmt} export -> {written.output}/: {splits}; "
                                     "card README.md"))
            if reviewed is not None:
                click.echo(terminal_safe(reviewed_line(reviewed)))
            if repo is not None:
                click.echo(terminal_safe(
                    f"pushed -> {push_to_hub(written.output, repo, private=private)}"))
        elif reviewed is not None:  # --check-template alone: it checked the rows left
            click.echo(terminal_safe(reviewed_line(reviewed)))
    except (InspectError, ExportError) as exc:
        raise UserError(str(exc)) from None
    if problems:
        sys.exit(1)


@main.command()
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=Path))
@click.option("--sample", "size", type=click.IntRange(min=1), default=None,
              help="Examples to review (all of them when the run has fewer).  "
                   "[default: the kept sample's, else 200 as in Self-Instruct §3.3]")
@click.option("--seed", type=int, default=None,
              help="Seed of the draw.  [default: the kept sample's, else 0]")
@click.option("--stratify", type=click.Choice(["round", "score", "classification"]),
              default=None,
              help="Draw in proportion from every round, judge's overall score or task kind.  "
                   "[default: a simple random sample]")
@click.option("--resample", is_flag=True,
              help="Draw a new sample instead of going on with the kept one (answers are kept).")
@click.option("--reviewer", default=None, metavar="NAME",
              help="Whose answers these are: each reviewer has their own labels file.  "
                   "[default: your login name]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on (anyone who can reach it can change the answers).")
@click.option("--port", type=click.IntRange(0, 65535), default=0,
              help="Port to serve on.  [default: a free one]")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def review(run_dir: Path, size: int | None, seed: int | None, stratify: str | None,
           resample: bool, reviewer: str | None, host: str, port: int,
           open_browser: bool) -> None:
    """Review a sample of a run's examples in a local web page.

    Serves a page (on 127.0.0.1, a free port unless --port is given) that shows
    one sampled example at a time and asks Self-Instruct §3.3's three questions:
    is the instruction a valid task, is the input appropriate, is the output
    correct and acceptable. Keys only: y/n, arrows. Each answer is written at
    once to RUN_DIR/review/labels-NAME.parquet, so stopping and running the same
    command again goes on where the review stopped. A judged run's scores are
    shown after the three answers; `inspect` reports the quality table and the
    judge's agreement with the reviewers.
    """
    from .analysis.loading import InspectError, load_run
    from .analysis.quality import scale_of
    from .review import ReviewError
    from .review.labels import (LabelStore, check_reviewer, default_reviewer, labels_path,
                                read_label_file)
    from .review.sample import open_sample
    from .review.server import ReviewSession, bind, build_app, serve, session_examples, url_of
    from .terminal import terminal_safe

    sock, store = None, None
    try:
        name = check_reviewer(reviewer) if reviewer is not None else default_reviewer()
        run = load_run(run_dir)
        if run.kind != "run":
            raise ReviewError(f"{run_dir}: not a run directory (no manifest.json); review "
                              "writes its labels inside the run it reviews")
        sock = bind(host, port)  # before the sample is drawn: a port in use writes nothing
        if labels_path(run_dir, name).exists():  # likewise a damaged labels file
            read_label_file(labels_path(run_dir, name))
        sample, positions, notes = open_sample(run_dir, run.frame, size, seed, stratify,
                                               resample=resample)
        store = LabelStore(run_dir, name).open()
    except (InspectError, ReviewError) as exc:
        if sock is not None:
            sock.close()
        if store is not None:
            store.close()
        raise UserError(str(exc)) from None
    try:
        session = ReviewSession(
            run_dir.resolve().name, session_examples(
                run.frame, positions, [e.key for e in sample.examples],
                [e.stratum for e in sample.examples]),
            store, scale=scale_of(run)[0])
        loopback = host in ("127.0.0.1", "localhost", "::1")
        url = url_of(sock)
        for note in notes:
            click.echo(terminal_safe(note), err=True)
        if not loopback:
            click.echo(terminal_safe(f"Warning: serving on {host}: anyone who can reach it can "
                                     "read the examples and change the answers"), err=True)
        click.echo(terminal_safe(
            f"Reviewing {len(session.examples)} examples of {run_dir} as {name} "
            f"({session.answered()} answered); answers go to {store.path}"))
        click.echo(f"Open {url}  (Ctrl-C stops; run the same command to go on)", err=False)
        sys.stdout.flush()
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        try:
            serve(build_app(session, None if loopback else ["*"]), sock)
        except KeyboardInterrupt:  # uvicorn stops on Ctrl-C/SIGTERM, then raises it again
            pass
        click.echo(terminal_safe(f"Stopped: {session.answered()} of {len(session.examples)} "
                                 f"answered, in {store.path}"))
    finally:
        store.close()


DECONTAMINATE_OPTIONS = {
    "against": "decontamination.against",
    "methods": "decontamination.methods",
    "ngram": "decontamination.ngram",
    "min_item_tokens": "decontamination.min_item_tokens",
    "rouge_threshold": "decontamination.rouge_threshold",
    "embedding_model": "decontamination.embedding_model",
    "embedding_threshold": "decontamination.embedding_threshold",
    "cache_dir": "decontamination.cache_dir",
}


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--against", multiple=True, required=True, metavar="[NAME=]PATH[:FIELD,...]",
              help="An evaluation set: a local record file (JSON, JSONL, Parquet, CSV, also "
                   "gzipped) or save_to_disk directory, the fields holding its text "
                   "[default: the first of prompt, question, instruction, ...], and a name "
                   "[default: the file's stem]. Repeatable.")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True,
              help="Directory for the clean rows (shards and manifest, a run directory) and "
                   "contaminated.parquet (the dropped rows and their matches).")
@click.option("--method", "methods", multiple=True,
              type=click.Choice(["ngram", "rouge", "embedding"]),
              help=config_help("decontamination.methods") + " Repeatable.")
@click.option("--ngram", type=int, default=None, help=config_help("decontamination.ngram"))
@click.option("--min-item-tokens", type=int, default=None,
              help=config_help("decontamination.min_item_tokens"))
@click.option("--rouge-threshold", type=float, default=None,
              help=config_help("decontamination.rouge_threshold"))
@click.option("--embedding-model", default=None, metavar="DIR",
              help=config_help("decontamination.embedding_model"))
@click.option("--embedding-threshold", type=float, default=None,
              help=config_help("decontamination.embedding_threshold"))
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help=config_help("decontamination.cache_dir"))
def decontaminate(input_path: Path, output: Path, **options: Any) -> None:
    """Drop the examples of a data set that repeat an evaluation benchmark.

    INPUT is a run directory or records of instruction/input/output (anything
    `inspect` reads). Each example is checked against every --against set by
    n-gram overlap of normalized words (13-grams, GPT-3's rule) and by ROUGE-L
    of its instruction and input (above 0.7); see README "Decontamination".
    """
    from .config import ConfigError, load_config
    from .decontamination import DecontaminationError
    from .decontamination.job import CONTAMINATED_FILE, decontaminate as run_decontaminate
    from .terminal import terminal_safe

    options["against"] = list(options["against"])
    options["methods"] = list(options["methods"]) or None
    names = {key: "--" + name.replace("_", "-") for name, key in DECONTAMINATE_OPTIONS.items()}
    names["decontamination.methods"] = "--method"
    try:
        config = load_config(None, {DECONTAMINATE_OPTIONS[k]: v for k, v in options.items()},
                             names).decontamination
        summary = run_decontaminate(input_path, output, config)
    except (ConfigError, DecontaminationError) as exc:
        raise UserError(str(exc)) from None
    for note in summary["notes"]:
        click.echo(terminal_safe(f"note: {note}"), err=True)
    for name, counts in summary["by_benchmark"].items():
        methods = ", ".join(f"{m} {counts[m]}" for m in config.methods)
        click.echo(terminal_safe(f"{name}: examples flagged {counts['examples']} ({methods})"))
    seconds = summary["seconds"]
    click.echo(terminal_safe(
        f"kept {summary['rows_kept']} of {summary['rows_checked']} rows -> {output}/; "
        f"{summary['rows_dropped']} dropped -> {output / CONTAMINATED_FILE} "
        f"({seconds['total']:.1f} s: read {seconds['read']:.1f}, index {seconds['index']:.1f}, "
        f"check {seconds['check']:.1f})"))


if __name__ == "__main__":
    main()
