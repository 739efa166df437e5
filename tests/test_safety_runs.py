"""Run directories are untrusted input (issue 10): crafted manifests, templates, shards
and ledgers are refused with one line and exit 2, run nothing, and change nothing.

The run directory here is a real one: ``GenerateJob`` (the `generate` command's job)
writes it through the whole pipeline, with the scripted per-request engine of
test_pipeline.py in place of vLLM so that the suite's fast tier can make it. The same
read-only checks run on a real vLLM run in test_generate_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from selfinstruct.seeds import default_seeds_dir

from .test_pipeline import ScriptedEngine

BIN = Path(sys.executable).parent / "selfinstruct"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """Exit 2, one stderr line containing ``expected``, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]


def tree_digests(root: Path) -> dict[str, str]:
    """Every file below ``root`` (relative path -> sha256), and every directory."""
    out = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        out[name] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                     and not path.is_symlink() else "dir" if path.is_dir() else "other")
    return out


def make_scripted_run(base: Path) -> Path:
    """A complete `generate` run (12 bundled seeds, 4 tasks) made by GenerateJob."""
    from selfinstruct import run as run_module
    from selfinstruct.cli import GENERATE_OPTIONS

    base.mkdir(parents=True, exist_ok=True)
    seeds = base / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    model = base / "model"  # resolves as a local model directory; never loaded
    model.mkdir()
    (model / "config.json").write_text("{}")
    options = dict.fromkeys(GENERATE_OPTIONS)
    options.update(seeds=seeds, model=str(model), output=base / "run", num_instructions=4,
                   seed=3, prompts_per_round=1, shard_size=3)
    job = run_module.GenerateJob.prepare(None, options, GENERATE_OPTIONS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "build_engine", lambda config, model: ScriptedEngine())
        job.execute()
    return base / "run"


@pytest.fixture(scope="module")
def scripted_run(tmp_path_factory) -> Path:
    run = make_scripted_run(tmp_path_factory.mktemp("scripted"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rounds"] >= 2 and manifest["files"]
    return run


@pytest.fixture
def run_copy(scripted_run, tmp_path) -> Path:
    """A private copy of the run, beside its seeds and model (same relative layout)."""
    base = tmp_path / "copy"
    shutil.copytree(scripted_run.parent, base, symlinks=True)
    seeds = str(base / "seeds.jsonl")
    edit_manifest(base / "run", lambda m: (m["seeds"].update(path=seeds),
                                           m["seeds"]["files"][0].update(path=seeds)))
    return base / "run"


def edit_manifest(run: Path, change) -> None:
    path = run / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# -- templates from a run directory never run code ------------------------------------

EVIL = "{{ cycler.__init__.__globals__.os.system('touch %s') }}"


def evil_prompts(tmp_path: Path, marker: Path) -> Path:
    directory = tmp_path / "evil-prompts"
    shutil.copytree(default_seeds_dir().parent / "prompts", directory)
    (directory / "classification.jinja").write_text(EVIL % marker)
    return directory


def test_refilter_never_renders_templates_that_differ_from_the_recorded_ones(run_copy, tmp_path):
    marker = tmp_path / "PWNED"
    prompts = evil_prompts(tmp_path, marker)
    edit_manifest(run_copy, lambda m: m.update(prompts=str(prompts)))
    # the recorded directory fails its hashes; the bundled templates match them
    result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out2"), "--prompts", str(prompts))
    one_line_error(result, "classification.jinja: prompt template differs from the one the run")
    assert not marker.exists() and not (tmp_path / "out2").exists()
    # even when the recorded hash is forged to match, the sandbox stops the template
    digest = hashlib.sha256((prompts / "classification.jinja").read_bytes()).hexdigest()
    edit_manifest(run_copy, lambda m: m["identity"]["prompts_sha256"].update(
        classification=digest))
    result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out2"))
    one_line_error(result, "classification.jinja: template fails to render")
    assert not marker.exists() and not (tmp_path / "out2").exists()


def test_generate_with_code_or_undefined_variables_in_templates_creates_nothing(
        scripted_run, tmp_path):
    marker = tmp_path / "PWNED"
    seeds = scripted_run.parent / "seeds.jsonl"
    model = scripted_run.parent / "model"
    out = tmp_path / "out"
    result = cli("generate", "--seeds", str(seeds), "--model", str(model), "-o", str(out),
                 "--prompts", str(evil_prompts(tmp_path, marker)))
    one_line_error(result, "classification.jinja: template fails to render")
    assert not marker.exists() and not out.exists()
    undefined = tmp_path / "undefined"
    shutil.copytree(default_seeds_dir().parent / "prompts", undefined)
    (undefined / "instances_input_first.jinja").write_text("Task: {{ instruction }} {{ nosuch }}\n")
    result = cli("generate", "--seeds", str(seeds), "--model", str(model), "-o", str(out),
                 "--prompts", str(undefined))
    one_line_error(result, "instances_input_first.jinja: template uses undefined variable "
                           "'nosuch'")
    assert not out.exists()


def test_refilter_finds_moved_templates_and_seeds_by_their_hashes(run_copy, tmp_path):
    seeds = run_copy.parent / "seeds.jsonl"
    moved = tmp_path / "moved.jsonl"
    seeds.rename(moved)
    result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out"))
    one_line_error(result, "seed files differ from the ones the run was made from")
    edit_manifest(run_copy, lambda m: m.update(prompts=str(tmp_path / "gone")))
    result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out"), "--seeds", str(moved))
    assert result.returncode == 0, result.stderr  # the bundled templates have the same hashes
    moved.write_text(moved.read_text() + "\n")
    result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out2"), "--seeds", str(moved))
    one_line_error(result, "moved.jsonl: seed files differ")


# -- shards are read only when they are the run's own -----------------------------------


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_a_shard_changed_since_the_run_is_refused(run_copy, tmp_path, command):
    shard = run_copy / "data" / "shard-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    extra = ["--format", "alpaca", "-o", str(tmp_path / "out")] if command == "export" else []
    result = cli(command, str(run_copy), "--tokenizer", "none", *extra)
    one_line_error(result, "shard-00000.parquet: does not match the sha256 in manifest.json")
    assert not (tmp_path / "out").exists()


@pytest.mark.fast_cases(lambda command, how: command == "export")
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
@pytest.mark.parametrize("command", ["inspect", "export"])
def test_shard_paths_never_leave_the_run(run_copy, tmp_path, command, how):
    foreign = tmp_path / "foreign.parquet"
    shutil.copy(run_copy / "data" / "shard-00000.parquet", foreign)
    digest = hashlib.sha256(foreign.read_bytes()).hexdigest()
    if how == "symlink":
        (run_copy / "data" / "shard-00000.parquet").unlink()
        (run_copy / "data" / "shard-00000.parquet").symlink_to(foreign)
        expected = "leads outside the run directory"
    else:
        path = str(foreign) if how == "absolute" else "../../foreign.parquet"
        edit_manifest(run_copy, lambda m: m["files"][0].update(path=path, sha256=digest))
        expected = "is not a path inside the run directory"
    extra = ["--format", "parquet", "-o", str(tmp_path / "out")] if command == "export" else []
    result = cli(command, str(run_copy), "--tokenizer", "none", *extra)
    one_line_error(result, expected)
    assert "files[0].path" in result.stderr or how == "symlink"
    assert not (tmp_path / "out").exists()


# -- manifests of the wrong shape -------------------------------------------------------

WRONG_SHAPES = [
    ("[]", "expected a JSON object, found list"),
    ('"text"', "expected a JSON object, found str"),
    ('{"format": "selfinstruct-shards/1", "files": {"a": 1}}', "field 'files'"),
    ('{"format": "selfinstruct-shards/1", "files": [{"path": 3}]}', "field 'files[0].path'"),
    (('{"format": "selfinstruct-shards/1", "files": [], "identity": null, "config": {}, '
      '"seeds": {}, "model": {}, "prompts": "p"}'), "field 'identity': missing"),
    ('{"format": "selfinstruct-shards/1", "files": [], "identity": [1]}', "field 'identity'"),
    ('{"format": "other/2"}', "field 'format'"),
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
]


def manifest_commands(run: Path, out: Path) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "--seeds", str(run.parent / "seeds.jsonl"), "--model",
                     str(run.parent / "model"), "-o", str(run), "-n", "4", "--seed", "3",
                     "--prompts-per-round", "1", "--shard-size", "3"],
        "refilter": ["refilter", str(run), "-o", str(out)],
        "inspect": ["inspect", str(run), "--tokenizer", "none"],
        "export": ["export", str(run), "--format", "alpaca", "-o", str(out),
                   "--tokenizer", "none"],
    }


@pytest.mark.fast_cases(lambda command, text, expected: text == "[]" or (
    command == "refilter" and expected in ("nested too deeply", "field 'identity': missing")))
@pytest.mark.parametrize("text, expected", WRONG_SHAPES)
@pytest.mark.parametrize("command", ["generate", "refilter", "inspect", "export"])
def test_manifests_of_the_wrong_shape_get_one_line(run_copy, tmp_path, command, text, expected):
    (run_copy / "manifest.json").write_text(text)
    if "identity': missing" in expected and command in ("inspect", "export"):
        expected = "no rows" if command == "export" else None  # they need no identity
    before = tree_digests(run_copy.parent)
    out = tmp_path / "out"
    result = cli(*manifest_commands(run_copy, out)[command])
    if expected is None:
        assert result.returncode == 0, result.stderr
    else:
        one_line_error(result, expected)
    assert tree_digests(run_copy.parent) == before
    assert not out.exists()


# -- refilter needs a whole ledger --------------------------------------------------------


@pytest.mark.fast_cases(lambda damage, expected: damage in ("no-ledger", "commit-not-json",
                                                           "first-commit-gone"))
@pytest.mark.parametrize("damage, expected", [
    ("no-ledger", "ledger: missing or empty"),
    ("no-commit", "round-00002/commit.json: missing, but the manifest records"),
    ("commit-not-json", "round-00001/commit.json: damaged commit record"),
    ("commit-wrong-shape", "round-00001/commit.json: damaged commit record: field 'files'"),
    ("first-commit-gone", "round-00001/commit.json: missing, but the manifest records"),
])
def test_refilter_refuses_a_source_with_a_broken_ledger(run_copy, tmp_path, damage, expected):
    ledger = run_copy / "ledger"
    if damage == "no-ledger":
        shutil.rmtree(ledger)
    elif damage == "no-commit":
        (ledger / "round-00002" / "commit.json").unlink()
    elif damage == "commit-not-json":
        (ledger / "round-00001" / "commit.json").write_text("{oops")
    elif damage == "commit-wrong-shape":
        (ledger / "round-00001" / "commit.json").write_text('{"round": 1}')
    else:
        (ledger / "round-00001" / "commit.json").unlink()
    result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out"))
    one_line_error(result, expected)
    assert not (tmp_path / "out").exists()


def test_refilter_of_a_run_in_progress_uses_its_committed_rounds_and_says_so(run_copy, tmp_path):
    from selfinstruct.storage.ledger import RunDirectory

    (run_copy / "ledger" / "round-00002" / "commit.json").unlink()
    edit_manifest(run_copy, lambda m: m.update(status="running", rounds=1))
    holder = RunDirectory(run_copy)
    holder.lock()  # a live generate holds its run directory
    try:
        result = cli("refilter", str(run_copy), "-o", str(tmp_path / "out"))
    finally:
        holder.unlock()
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())  # rich wraps lines
    assert "still in progress" in said and "uses the 1 rounds committed" in said
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["rounds"] == 1 and manifest["status"] == "complete"


# -- nothing in a run directory changes, whatever a command is given ------------------


def score_commands(run: Path, elsewhere: Path, judge_url: str) -> list[list[str]]:
    """``score`` of the run (and of one of its shards) with the judge at ``judge_url``:
    into ``elsewhere`` (succeeds), and at the run, into it, or around its shard (refused)."""
    shard = run / "data" / "shard-00000.parquet"
    judge = ["--base-url", judge_url]
    return [["score", str(run), "-o", str(elsewhere / "scored"), *judge],
            *(["score", str(run), "-o", str(target), *judge]
              for target in (run, run / "data", run / "ledger", run / "scored")),
            ["score", str(shard), "-o", str(run), *judge]]


SCORE_REFUSALS = 5
"""The commands of :func:`score_commands` aimed at the run itself."""


def read_only_commands(run: Path, elsewhere: Path, judge_url: str | None = None
                       ) -> list[list[str]]:
    """Every command, with flags, that reads a run; outputs go to ``elsewhere`` or are
    aimed at the run itself (and must be refused). ``score`` is among them when a
    judge is given (``judge_url``: an OpenAI-compatible endpoint)."""
    shard = str(run / "data" / "shard-00000.parquet")
    commands = [
        ["inspect", str(run), "--tokenizer", "none"],
        ["inspect", str(run), "--tokenizer", "none", "--json", "--sample", "5",
         "--where", "round>=1"],
        ["inspect", str(run), "--tokenizer", "none", "--report", str(elsewhere / "report")],
        ["inspect", str(run), "--tokenizer", "none", "--report", str(run)],
        ["inspect", str(run), "--tokenizer", "none", "--report", str(run / "data")],
        ["refilter", str(run), "-o", str(elsewhere / "refiltered"), "--rouge-threshold", "0.5"],
        ["refilter", str(run), "-o", str(run)],
        ["refilter", str(run), "-o", str(run / "sub")],
        ["refilter", str(run), "-o", str(run / "data")],
        ["dedup", shard, "-o", str(elsewhere / "kept.parquet")],
        ["dedup", shard, "-o", shard],
        ["dedup", shard, "-o", str(run / "data" / "kept.parquet")],
    ]
    commands.extend(["export", str(run), "--format", fmt, "-o", str(elsewhere / fmt),
                     "--tokenizer", "none", "--train-split", "0.5"]
                    for fmt in ("alpaca", "sharegpt", "messages", "parquet", "datasets"))
    commands.extend(["export", str(run), "--format", "alpaca", "-o", str(target),
                     "--tokenizer", "none", "--overwrite"]
                    for target in (run, run / "data", run / "ledger", run / "new"))
    commands.append(["generate", "--seeds", str(run.parent / "seeds.jsonl"), "--model",
                     str(run.parent / "model"), "-o", str(run), "--seed", "4"])
    if judge_url is not None:
        commands.extend(score_commands(run, elsewhere, judge_url))
    return commands


def assert_commands_change_nothing(run: Path, elsewhere: Path,
                                   judge_url: str | None = None) -> list:
    """Run every read-only command on ``run``; return their results."""
    before = tree_digests(run)
    results = []
    for args in read_only_commands(run, elsewhere, judge_url):
        result = cli(*args)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.returncode in (0, 2), (args, result.stderr)
        assert tree_digests(run) == before, f"{args} changed the run directory"
        results.append((args, result))
    return results


@pytest.fixture
def judge_url():
    """A fake judge over HTTP (JSON verdicts), for ``score`` in a subprocess."""
    from .judge_fakes import VerdictServer

    with VerdictServer() as server:
        yield server.url


@pytest.mark.slow
def test_no_command_changes_a_run_directory(run_copy, tmp_path, judge_url):
    results = assert_commands_change_nothing(run_copy, tmp_path / "elsewhere", judge_url)
    failed = [args for args, result in results if result.returncode]
    # every command aimed at the run itself is refused; the rest succeed
    assert all(str(run_copy) in " ".join(a[2:]) for a in failed)
    assert len(failed) == 12 + SCORE_REFUSALS, failed
    scored = json.loads((tmp_path / "elsewhere" / "scored" / "manifest.json").read_text())
    assert scored["status"] == "complete" and scored["stats"]["quality"]["judged"] > 0


def test_score_of_a_run_changes_nothing_in_it_and_score_into_it_is_refused(
        run_copy, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from selfinstruct.cli import main

    from .judge_fakes import use_scripted_judge

    engine = use_scripted_judge(monkeypatch)
    before = tree_digests(run_copy)
    elsewhere = tmp_path / "elsewhere"
    commands = score_commands(run_copy, elsewhere, "http://127.0.0.1:9/v1")
    good = [a for a in commands[0] if a not in ("--base-url", "http://127.0.0.1:9/v1")]
    result = CliRunner().invoke(main, good)
    assert result.exit_code == 0, result.output
    assert engine.batches and tree_digests(run_copy) == before
    rows = json.loads((elsewhere / "scored" / "manifest.json").read_text())["rows"]
    assert rows == json.loads((run_copy / "manifest.json").read_text())["rows"]
    for args in commands[1:]:  # refused before the (unreachable) judge is asked
        result = CliRunner().invoke(main, args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1, (args, result.output)
        assert str(run_copy) in lines[0] and "choose another --output" in lines[0], lines[0]
        assert tree_digests(run_copy) == before, f"{args} changed the run directory"
    assert not (run_copy / "scored").exists()


@pytest.fixture
def read_only_run(run_copy, tmp_path):
    """``run_copy`` behind a read-only bind mount (root ignores permission bits)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "--bind", "-o", "ro", str(run_copy.parent), str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot make a read-only bind mount here")
    try:
        if subprocess.run(["touch", str(mount / "probe")], capture_output=True).returncode == 0:
            pytest.skip("the bind mount is not read-only")
        yield mount / "run"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_commands_on_a_read_only_run_get_one_line_and_change_nothing(read_only_run, tmp_path,
                                                                     judge_url):
    assert_commands_change_nothing(read_only_run, tmp_path / "elsewhere", judge_url)
    before = tree_digests(read_only_run)
    result = cli("generate", "--seeds", str(read_only_run.parent / "seeds.jsonl"), "--model",
                 str(read_only_run.parent / "model"), "-o", str(read_only_run), "-n", "6",
                 "--seed", "3", "--prompts-per-round", "1", "--shard-size", "3")
    one_line_error(result, "read-only")
    assert tree_digests(read_only_run) == before
