"""The command line: start-up cost, and user mistakes (exit 2, one line, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "selfinstruct"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_is_fast_and_imports_no_engine():
    started = time.perf_counter()
    result = cli("--help")
    assert result.returncode == 0 and "generate" in result.stdout
    assert time.perf_counter() - started < 1.5  # a loose ceiling; the target is well under 1 s
    probe = subprocess.run(
        [sys.executable, "-c",
         ("import sys; from selfinstruct.cli import main\n"
          "try:\n    main(['generate', '--help'])\nexcept SystemExit:\n    pass\n"
          "bad = [m for m in ('vllm', 'torch', 'transformers', 'pandas') if m in sys.modules]\n"
          "print('LOADED', bad)")], capture_output=True, text=True)
    assert "LOADED []" in probe.stdout, probe.stdout + probe.stderr


def seeds_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = json.dumps({"id": "a", "instruction": "Add the two numbers together.",
                   "instances": [{"input": "1, 2", "output": "3"}]}) + "\n"


@pytest.mark.parametrize("make_args, expected", [
    (lambda t: ["--seeds",
                str(seeds_file(t, '{"instruction": "x", "instances": [{"input": "a"}]}\n'))],
     "seeds.jsonl:1: field 'instances[0].output': missing"),
    (lambda t: ["--seeds", str(t / "absent.jsonl")], "absent.jsonl: seed file not found"),
    (lambda t: ["--seeds", str(seeds_file(t, ""))], "file is empty"),
    (lambda t: ["--seeds", str(seeds_file(t, GOOD)), "--model", str(t / "no-such-model")],
     "no-such-model: model path does not exist"),
    (lambda t: ["--seeds", str(seeds_file(t, GOOD)), "--model", str(t / "m.gguf")],
     "m.gguf: model file does not exist"),
    (lambda t: ["--seeds", str(seeds_file(t, GOOD)), "--temperature", "9"],
     "option --temperature: "),
    (lambda t: ["--seeds", str(seeds_file(t, GOOD)), "--config",
                str((t / "c.toml").write_text("[filters]\nrouge = 1\n") and t / "c.toml")],
     "c.toml:2: field 'filters.rouge': unknown key"),
])
def test_user_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path, make_args, expected):
    out = tmp_path / "out"
    result = cli("generate", *make_args(tmp_path), "--output", str(out))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert expected in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("content, expected", [
    ({"notes.txt": "mine"}, "is not empty and holds no selfinstruct run"),
    ({"manifest.json": "{not json"}, "damaged manifest"),
    ("other-seed", "holds a run made with settings.seed = 99, not 0"),
])
def test_output_directory_of_something_else_is_refused(tmp_path, content, expected):
    model = tmp_path / "model"  # resolves as a local model directory; never loaded
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    seeds = seeds_file(tmp_path, GOOD)
    if content == "other-seed":  # the manifest of a real run whose seed differs
        from selfinstruct.cli import GENERATE_OPTIONS
        from selfinstruct.run import GenerateJob

        options = dict.fromkeys(GENERATE_OPTIONS)
        options.update(seeds=seeds, model=str(model), output=tmp_path / "elsewhere")
        identity = GenerateJob.prepare(None, options, GENERATE_OPTIONS).identity()
        identity["settings"]["seed"] = 99
        content = {"manifest.json": json.dumps({"format": "selfinstruct-shards/1",
                                                "identity": identity})}
    for name, text in content.items():
        (out / name).write_text(text)
    result = cli("generate", "--seeds", str(seeds), "--output", str(out), "--model", str(model))
    assert result.returncode == 2
    assert expected in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(content)


def test_help_texts_state_the_config_models_defaults():
    from selfinstruct.cli import GENERATE_OPTIONS, generate
    from selfinstruct.config_help import default_of, shown

    checked = 0
    for param in generate.params:
        key = GENERATE_OPTIONS.get(param.name)
        if key is None or param.help is None:
            continue
        default = default_of(key)
        if default in (None, []) or isinstance(default, bool):  # in words ("bundled seeds/")
            continue
        assert f"[default: {shown(default)}" in param.help, (param.name, param.help)
        checked += 1
    assert checked >= 20
    helps = {p.name: p.help for p in generate.params}
    # a recipe's own default follows the paper's (RECIPE_DEFAULTS)
    assert helps["temperature"].endswith("[default: 0.7; alpaca recipe: 1]")
    assert helps["presence_penalty"].endswith("[default: 2; alpaca recipe: 0]")
    assert helps["max_model_len"].endswith("[default: 2048; alpaca recipe: 4096]")
    assert helps["min_words"].endswith("[default: 4]")
    assert helps["stop"].endswith("[default: '\\n\\n']")
    assert helps["reject_non_ascii_start"].endswith("[default: reject]")


def test_default_of_reads_nested_fields_and_refuses_unknown_ones():
    from selfinstruct.config_help import choices_of, default_of

    assert default_of("instances.output_first_max_tokens") == 300
    assert default_of("generation.stop") == ["\n\n"]
    assert choices_of("engine.backend") == ["vllm", "http", "ray"]
    with pytest.raises(KeyError):
        default_of("generation.temprature")


def test_instruction_sampling_flags_reach_the_config(monkeypatch):
    from click.testing import CliRunner

    from selfinstruct import cli as cli_module, run
    from selfinstruct.config import load_config

    seen = []

    def prepare(config_file, options, option_keys):
        seen.append(load_config(config_file, {option_keys[n]: v for n, v in options.items()}))
        raise run.JobError("prepared")

    monkeypatch.setattr(run.GenerateJob, "prepare", staticmethod(prepare))
    runner = CliRunner()
    result = runner.invoke(cli_module.main, ["generate", "--presence-penalty", "1.25",
                                             "--stop", "###", "--stop", "\n\n"])
    assert result.exit_code == 2 and "prepared" in result.output, result.output
    result = runner.invoke(cli_module.main, ["generate"])
    assert result.exit_code == 2 and "prepared" in result.output, result.output
    given, default = (config.generation for config in seen)
    assert (given.presence_penalty, given.stop) == (1.25, ["###", "\n\n"])
    assert (default.presence_penalty, default.stop) == (2.0, ["\n\n"])


def test_presence_penalty_out_of_range_is_a_user_error(tmp_path):
    seeds = seeds_file(tmp_path, GOOD)
    result = cli("generate", "--seeds", str(seeds), "--presence-penalty", "2.5",
                 "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "option --presence-penalty: " in result.stderr
    assert not (tmp_path / "out").exists()
