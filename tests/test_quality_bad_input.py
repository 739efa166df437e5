"""Bad input for quality scoring (issue 12), through the command line: a judge model
that does not exist, a judge endpoint that is down, silent or serves another model, a
rubric template that is absent or misses a required variable, and bad cut and budget
values, for ``generate --judge``, ``score`` and ``refilter``. Each exits 2 with one line
on stderr and no traceback, writes nothing (the output directory is not created) and
answers within seconds. Scores outside the scale are judge_unparseable.

Commands run in-process (click's CliRunner) so that no engine can start: the vLLM and
Ray backends are replaced by a guard that fails the test when one would
(:func:`~tests.judge_fakes.forbid_local_engines`); endpoints are fake HTTP servers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from selfinstruct.prompts import default_prompts_dir
from selfinstruct.quality import JUDGE_UNPARSEABLE, column, example_key
from selfinstruct.testing.local_server import free_port
from selfinstruct.testing.scripted import ScriptedEngine, scripted_verdict

from .http_fakes import FakeOpenAI
from .judge_fakes import forbid_local_engines, make_judged_run, use_scripted_judge
from .test_safety_runs import make_scripted_run

SECONDS = 15.0
"""The most a refused command may take (the endpoint start-up check gives up after 10 s)."""

GOOD_SEED = json.dumps({"id": "a", "instruction": "Add the two numbers together.",
                        "instances": [{"input": "1, 2", "output": "3"}]}) + "\n"
RECORDS = [{"instruction": "Say hi.", "input": "", "output": "Hi."},
           {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
           {"instruction": "Name a colour.", "input": "", "output": "Blue."},
           {"instruction": "Spell the word backwards.", "input": "cat", "output": "tac"}]


def snapshot(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            name = f"{root}/{path.relative_to(root).as_posix()}"
            if path.is_symlink():
                out[name] = "link:" + os.readlink(path)
            elif path.is_file():
                out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[name] = "dir"
    return out


def invoke(args: list[str]) -> tuple[Result, float]:
    from selfinstruct.cli import main

    started = time.monotonic()
    result = CliRunner().invoke(main, args)
    return result, time.monotonic() - started


def one_line_error(result: Result, expected: str) -> str:
    """Exit 2, one stderr line containing ``expected``, no traceback; the line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    return lines[0]


# -- the workspace: inputs, runs and endpoints ------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A plain and a judged ``generate`` run (scripted engine), made once per module."""
    return {"plain": make_scripted_run(tmp_path_factory.mktemp("plain")),
            "judged": make_judged_run(tmp_path_factory.mktemp("judged"))}


@pytest.fixture(scope="module")
def endpoints() -> Iterator[dict[str, str]]:
    """A port nobody listens on, one that accepts connections and never answers, a
    server of another model and a server of two models."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    other, two = FakeOpenAI(models=("other-model",)), FakeOpenAI(models=("a", "b"))
    with other, two:
        yield {"down": f"http://127.0.0.1:{free_port()}/v1",
               "silent": f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
               "other": other.url, "two": two.url}
    silent.close()


@pytest.fixture
def ws(tmp_path, runs, endpoints, monkeypatch) -> dict[str, object]:
    forbid_local_engines(monkeypatch)
    (tmp_path / "seeds.jsonl").write_text(GOOD_SEED)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (tmp_path / "inputs").mkdir()
    shutil.copy(records, tmp_path / "inputs" / "records.jsonl")
    prompts = tmp_path / "prompts"
    shutil.copytree(default_prompts_dir(), prompts)
    judge = (prompts / "judge.jinja").read_text(encoding="utf-8")
    assert "{{ output }}" in judge
    (prompts / "judge.jinja").write_text(judge.replace("{{ output }}", ""), encoding="utf-8")
    (prompts / "lax.jinja").write_text("Rate {{ instruction }} given {{ input }}.\n")
    (tmp_path / "rubric.toml").write_text('[quality]\nrubric = "nosuch"\n')
    return {"t": tmp_path, "out": tmp_path / "out", "records": records, "prompts": prompts,
            **runs, **endpoints}


Build = Callable[[dict], list[str]]


def generate(w: dict, *extra: str, judge: bool = True) -> list[str]:
    t = w["t"]
    return ["generate", "--seeds", str(t / "seeds.jsonl"), "--model", str(t / "model"),
            "-o", str(w["out"]), *(["--judge"] if judge else []), *extra]


def score(w: dict, *extra: str, source: Path | None = None) -> list[str]:
    return ["score", str(source or w["records"]), "-o", str(w["out"]), *extra]


def refilter(w: dict, run: str, *extra: str) -> list[str]:
    return ["refilter", str(w[run]), "-o", str(w["out"]), *extra]


# (case id, generate's arguments, score's arguments, expected text in the error line)
JUDGE_CASES: list[tuple[str, Build, Build, str]] = [
    ("model-path-missing", lambda w: generate(w, "--judge-model", str(w["t"] / "nope")),
     lambda w: score(w, "--model", str(w["t"] / "nope")), "nope: model path does not exist"),
    ("gguf-missing", lambda w: generate(w, "--judge-model", str(w["t"] / "j.gguf")),
     lambda w: score(w, "--model", str(w["t"] / "j.gguf")), "j.gguf: model file does not exist"),
    ("endpoint-down", lambda w: generate(w, "--judge-base-url", w["down"]),
     lambda w: score(w, "--base-url", w["down"]), "cannot reach the server (connection refused)"),
    ("endpoint-silent", lambda w: generate(w, "--judge-base-url", w["silent"]),
     lambda w: score(w, "--base-url", w["silent"]), "no answer in 10 s"),
    ("endpoint-serves-another-model",
     lambda w: generate(w, "--judge-base-url", w["other"], "--judge-model", "judge-x"),
     lambda w: score(w, "--base-url", w["other"], "--model", "judge-x"),
     "does not serve model 'judge-x' (it serves: other-model)"),
    ("endpoint-serves-two-models", lambda w: generate(w, "--judge-base-url", w["two"]),
     lambda w: score(w, "--base-url", w["two"]), "serves 2 models (a, b)"),
    ("rubric-misses-output", lambda w: generate(w, "--prompts", str(w["prompts"])),
     lambda w: score(w, "--prompts", str(w["prompts"])),
     "judge.jinja: rubric template does not use required variable 'output'"),
    ("rubric-absent", lambda w: generate(w, "--config", str(w["t"] / "rubric.toml")),
     lambda w: score(w, "--rubric", "nosuch"), "nosuch.jinja: prompt template not found"),
    ("min-quality-unknown-question", lambda w: generate(w, "--min-quality", "foo=3"),
     lambda w: score(w, "--min-quality", "foo=3"),
     "option --min-quality: 'foo=3': the question must be one of"),
    ("min-quality-outside-scale", lambda w: generate(w, "--min-quality", "9"),
     lambda w: score(w, "--min-quality", "9"), "option --min-quality: "),
    ("min-quality-question-outside-scale", lambda w: generate(w, "--min-quality", "output=0"),
     lambda w: score(w, "--min-quality", "output=0"), "0 is outside the scale 1-5"),
    ("min-quality-nan", lambda w: generate(w, "--min-quality", "nan"),
     lambda w: score(w, "--min-quality", "nan"), "not [QUESTION=]NUMBER"),
    ("keep-best-fractional-count", lambda w: generate(w, "--keep-best", "2.5"),
     lambda w: score(w, "--keep-best", "2.5"), "option --keep-best: "),
    ("keep-best-zero", lambda w: generate(w, "--keep-best", "0"),
     lambda w: score(w, "--keep-best", "0"), "option --keep-best: "),
]

EXPECTED_TOO = {  # more of the line, where the case has a second thing to say
    "min-quality-outside-scale": "9 is outside the scale 1-5",
    "keep-best-fractional-count": "a whole number of examples",
    "keep-best-zero": "greater than 0",
    "rubric-misses-output": "prompts/judge.jinja",
}


@pytest.mark.fast_cases(lambda case, command: case != "endpoint-silent" or command == "score")
@pytest.mark.parametrize("command", ["generate", "score"])
@pytest.mark.parametrize("case", [c[0] for c in JUDGE_CASES])
def test_bad_judge_input_is_one_line_exit_2_nothing_written_in_seconds(ws, case, command):
    _, gen, sco, expected = next(c for c in JUDGE_CASES if c[0] == case)
    roots = (ws["t"], ws["plain"].parent, ws["judged"].parent)
    before = snapshot(*roots)
    result, seconds = invoke((gen if command == "generate" else sco)(ws))
    line = one_line_error(result, expected)
    assert EXPECTED_TOO.get(case, "") in line
    if case.startswith(("model", "gguf", "endpoint")):
        assert line.startswith("Error: the judge: "), line
    assert seconds < SECONDS, f"{case}: {seconds:.1f} s"
    assert not ws["out"].exists()
    assert snapshot(*roots) == before


OTHER_CASES: list[tuple[str, Build, str]] = [
    ("generate-min-quality-without-judge", lambda w: generate(w, "--min-quality", "3",
                                                              judge=False),
     "option --min-quality: Value error, a quality cut needs judge = true (--judge)"),
    ("generate-question-cut-without-judge", lambda w: generate(w, "--min-quality", "output=3",
                                                               judge=False),
     "a quality cut needs judge = true (--judge)"),
    ("generate-keep-best-without-judge", lambda w: generate(w, "--keep-best", "3", judge=False),
     "option --keep-best: Value error, a budget needs judge = true (--judge)"),
    ("generate-judge-url-without-judge",
     lambda w: generate(w, "--judge-base-url", w["down"], judge=False),
     "judge endpoints need judge = true (--judge)"),
    ("generate-judge-model-without-judge",
     lambda w: generate(w, "--judge-model", "x", judge=False),
     "a judge model needs judge = true (--judge)"),
    ("refilter-unjudged-min-quality", lambda w: refilter(w, "plain", "--min-quality", "3"),
     "option --min-quality: "),
    ("refilter-unjudged-keep-best", lambda w: refilter(w, "plain", "--keep-best", "2"),
     "option --keep-best: "),
    ("refilter-unknown-question", lambda w: refilter(w, "judged", "--min-quality", "foo=3"),
     "the question must be one of"),
    ("refilter-outside-scale", lambda w: refilter(w, "judged", "--min-quality", "9"),
     "option --min-quality: Value error, 9 is outside the scale 1-5"),
    ("refilter-keep-best-fractional-count", lambda w: refilter(w, "judged", "--keep-best", "2.5"),
     "option --keep-best: Value error, a whole number of examples"),
    ("refilter-keep-best-zero", lambda w: refilter(w, "judged", "--keep-best", "0"),
     "option --keep-best: Input should be greater than 0"),
    ("score-missing-file", lambda w: score(w, source=w["t"] / "absent.jsonl"),
     "absent.jsonl: no such file or directory"),
    ("score-output-is-the-input-file",
     lambda w: ["score", str(w["records"]), "-o", str(w["records"])],
     "--output is the input"),
    ("score-output-is-the-input-directory",
     lambda w: ["score", str(w["t"] / "inputs"), "-o", str(w["t"] / "inputs")],
     "--output is the input"),
    ("score-output-inside-the-input",
     lambda w: ["score", str(w["t"] / "inputs"), "-o", str(w["t"] / "inputs" / "scored")],
     "--output lies inside the input"),
    ("score-output-is-the-input-run", lambda w: ["score", str(w["plain"]), "-o", str(w["plain"])],
     "--output is the input"),
    ("score-output-inside-the-input-run",
     lambda w: ["score", str(w["plain"]), "-o", str(w["plain"] / "data")],
     "--output lies inside the input"),
    ("score-output-inside-another-run",
     lambda w: ["score", str(w["records"]), "-o", str(w["judged"] / "scored")],
     "which is a selfinstruct run"),
    ("score-output-is-a-generate-run",
     # refused before the judge is asked (its endpoint is down)
     lambda w: ["score", str(w["records"]), "-o", str(w["plain"]), "--base-url", w["down"]],
     "holds a selfinstruct run that `score` did not make"),
]


@pytest.mark.parametrize("case, build, expected", OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_bad_cuts_budgets_and_paths_are_one_line_exit_2_nothing_written(ws, case, build,
                                                                          expected):
    roots = (ws["t"], ws["plain"].parent, ws["judged"].parent)
    before = snapshot(*roots)
    args = build(ws)
    written = Path(args[args.index("-o") + 1])
    existed = written.exists()
    result, seconds = invoke(args)
    line = one_line_error(result, expected)
    if case.startswith("refilter-unjudged"):
        assert "was not judged, so it has no scores to cut by" in line
    assert seconds < SECONDS
    assert snapshot(*roots) == before
    assert written.exists() == existed, written


def test_generate_into_a_score_run_is_refused_before_the_engine(ws, monkeypatch):
    use_scripted_judge(monkeypatch)
    scored = ws["t"] / "scored"
    result, _ = invoke(["score", str(ws["records"]), "-o", str(scored)])
    assert result.exit_code == 0, result.output
    forbid_local_engines(monkeypatch)
    before = snapshot(ws["t"])
    result, _ = invoke(generate({**ws, "out": scored}))
    one_line_error(result, "holds a `selfinstruct score` run")
    assert snapshot(ws["t"]) == before


def test_refilter_of_a_score_run_says_how_to_recut_it(ws, monkeypatch):
    use_scripted_judge(monkeypatch)
    scored = ws["t"] / "scored"
    result, _ = invoke(["score", str(ws["records"]), "-o", str(scored)])
    assert result.exit_code == 0, result.output
    before = snapshot(ws["t"])
    result, _ = invoke(["refilter", str(scored), "-o", str(ws["out"]), "--min-quality", "3"])
    one_line_error(result, "a `selfinstruct score` run has no generation to re-derive; run "
                           "the same score command with other --min-quality")
    assert snapshot(ws["t"]) == before and not ws["out"].exists()


# -- scores outside the scale ------------------------------------------------------------


class OutOfScale(ScriptedEngine):
    """Judges like ScriptedEngine, but for keys starting with 0-7 the overall score is
    7 (keys 0-3) or 0 (keys 4-7): outside a 1-5 scale, inside 0-10."""

    def answer(self, request):
        completion = super().answer(request)
        if request.stage != "judging" or request.key[0] not in "01234567":
            return completion
        verdict = json.loads(scripted_verdict(request.key))
        verdict["overall"] = 7 if request.key[0] in "0123" else 0
        return type(completion)(json.dumps(verdict), completion.prompt_tokens,
                                completion.output_tokens, completion.finish_reason)


def shard_rows(run: Path) -> list[dict]:
    return [r for path in sorted((run / "data").glob("*.parquet"))
            for r in pq.read_table(path).to_pylist()]


def many_records(path: Path, n: int = 48) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"Count to {k} in French.", "input": "",
                                        "output": f"{k} " * (k % 5 + 1)}) + "\n"
                            for k in range(n)))
    return path


def check_out_of_scale(rows: list[dict], scale_max: int) -> None:
    outside = [r for r in rows if example_key(r["instruction"], r["input"], r["output"])[0]
               in "01234567"]
    assert outside and len(outside) < len(rows)
    for row in outside:
        key = example_key(row["instruction"], row["input"], row["output"])
        if scale_max == 5:
            assert row[column("overall")] is None and row[column("output")] is None
            assert row["quality_reason"] == JUDGE_UNPARSEABLE
            assert row["quality_output_rationale"] is None
        else:
            assert row[column("overall")] == (7 if key[0] in "0123" else 0)
            assert row["quality_reason"] is None


@pytest.mark.parametrize("scale_max", [5, 10])
def test_score_reads_a_score_outside_the_scale_as_unparseable(tmp_path, monkeypatch, scale_max):
    use_scripted_judge(monkeypatch, OutOfScale())
    records = many_records(tmp_path / "records.jsonl")
    config = tmp_path / "scale.toml"
    config.write_text(f"[quality]\nscale_min = 0\nscale_max = {scale_max}\n" if scale_max == 10
                      else "")
    result, _ = invoke(["score", str(records), "-o", str(tmp_path / "out"), "--config",
                        str(config)])
    assert result.exit_code == 0, result.output
    rows = shard_rows(tmp_path / "out")
    assert len(rows) == 48
    check_out_of_scale(rows, scale_max)
    unparseable = sum(r["quality_reason"] == JUDGE_UNPARSEABLE for r in rows)
    assert f"{unparseable} unparseable" in result.stdout
    if scale_max == 5:  # a cut keeps none of them
        result, _ = invoke(["score", str(records), "-o", str(tmp_path / "out"), "--config",
                            str(config), "--min-quality", "1"])
        assert result.exit_code == 0, result.output
        kept = shard_rows(tmp_path / "out")
        assert kept and all(r[column("overall")] is not None for r in kept)
        assert len(kept) == len(rows) - unparseable


def test_generate_judge_reads_a_score_outside_the_scale_as_unparseable(tmp_path, monkeypatch):
    from selfinstruct import run as run_module

    monkeypatch.setattr(run_module, "build_engine", lambda config, prepared: OutOfScale())
    seeds = tmp_path / "seeds.jsonl"
    from selfinstruct.seeds import default_seeds_dir

    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    result, _ = invoke(["generate", "--seeds", str(seeds), "--model", str(tmp_path / "model"),
                        "-o", str(tmp_path / "run"), "-n", "12", "--seed", "3",
                        "--prompts-per-round", "4", "--judge"])
    assert result.exit_code == 0, result.output
    check_out_of_scale(shard_rows(tmp_path / "run"), 5)
