"""`selfinstruct inspect RUN --reference PATH`: a run against a reference dataset
(the Stanford Alpaca data in ../shared/data), in --json, the tables and the report,
and the mistakes a --reference path can hold."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from selfinstruct.analysis.loading import load_run
from selfinstruct.analysis.reference import content_digest, reference_statistics
from selfinstruct.analysis.stats import collect_statistics
from selfinstruct.analysis.tables import reference_tables
from selfinstruct.analysis.verbs import heuristic_verb_object
from selfinstruct.storage.files import file_digest
from tests.conftest import ALPACA, REPO
from tests.small_run import TASKS, write_small_run
from tests.small_run import rows as small_run_rows

BIN = Path(sys.executable).parent / "selfinstruct"
ALPACA_AS_GIVEN = "../shared/data/alpaca_data.json"  # relative to the repository root
Z95 = 1.959963984540054


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps titles at 80 columns in a pipe
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)


def wilson(yes: int, n: int) -> tuple[float, float]:
    """The Wilson 95% interval, written out here from its formula."""
    p = yes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 / (1 + Z95 ** 2 / n) * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n))
    return centre - half, centre + half


@pytest.fixture(scope="module")
def alpaca() -> Path:
    if not ALPACA.is_file():
        pytest.skip(f"{ALPACA} is not present (the shared data beside the checkout)")
    return ALPACA


@pytest.fixture(scope="module")
def raw(alpaca) -> pd.DataFrame:
    """The Alpaca records read with json and pandas only."""
    return pd.DataFrame(json.loads(alpaca.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_small_run(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="module")
def compared(run_dir, alpaca) -> dict:
    return reference_statistics(load_run(run_dir), load_run(alpaca), verb_parser=None)


@pytest.fixture(scope="module")
def inspected(run_dir, alpaca, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`inspect RUN --reference ../shared/data/alpaca_data.json --report DIR`, from the
    repository root (so the path is given as the README gives it)."""
    report = tmp_path_factory.mktemp("report") / "out"
    return cli("inspect", str(run_dir), "--reference", ALPACA_AS_GIVEN, "--report",
               str(report), cwd=REPO), report


# -- the numbers, against the raw JSON ---------------------------------------------


@pytest.mark.slow
def test_the_share_with_input_is_alpacas_own(compared, raw):
    yes, n = int((raw["input"] != "").sum()), len(raw)
    assert n == 52002 and 0.38 < yes / n < 0.40  # "about 40%" of Alpaca has an input
    side = compared["with_input"]["reference"]
    assert (side["yes"], side["n"], side["share"]) == (yes, n, round(yes / n, 4))
    low, high = wilson(yes, n)
    assert (side["low"], side["high"]) == (round(low, 4), round(high, 4))
    assert side["low"] < side["share"] < side["high"] and side["high"] - side["low"] < 0.01
    run_rows = small_run_rows()
    run_yes = sum(1 for r in run_rows if r["input"])
    assert compared["with_input"]["run"]["yes"] == run_yes == 5
    assert compared["with_input"]["run"]["n"] == len(run_rows) == 9
    assert compared["with_input"]["difference_points"] == round((5 / 9 - yes / n) * 100, 4)


@pytest.mark.slow
def test_lengths_and_counts_are_alpacas_own(compared, raw):
    assert compared["examples"] == {"run": 9, "reference": 52002,
                                    "ratio": float(f"{9 / 52002:.4g}")}
    # every Alpaca instruction is distinct, so each is a task of its own
    assert compared["tasks"]["reference"] == raw["instruction"].nunique() == 52002
    words = {"instruction": raw["instruction"], "input": raw["input"][raw["input"] != ""],
             "output": raw["output"]}
    for field, texts in words.items():
        counts = texts.str.split().str.len()
        side = compared["lengths"][field]["reference"]
        assert side["count"] == len(counts)
        assert side["mean"] == round(counts.mean(), 2)
        assert side["p50"] == counts.median()
        assert side["p90"] == pytest.approx(counts.quantile(0.9))
        run_side = compared["lengths"][field]["run"]
        assert compared["lengths"][field]["ratio"]["p50"] == pytest.approx(
            run_side["p50"] / side["p50"], rel=1e-3)
    assert compared["lengths"]["instruction"]["reference"]["p50"] == 10
    assert compared["lengths"]["output"]["reference"]["p50"] == 30


@pytest.mark.slow
def test_the_leading_verbs_are_counted_on_both_sides(compared, raw):
    verbs = Counter(heuristic_verb_object(t)[0] for t in raw["instruction"])
    no_verb = verbs.pop(None)
    n = len(raw)
    ranked = sorted(verbs.items(), key=lambda kv: (-kv[1], kv[0]))
    ref_top = [v for v, _ in ranked[:15]]
    got = compared["verbs"]
    assert [v["verb"] for v in got["reference"]["top"]] == ref_top
    assert got["reference"]["top"][0] == {"verb": "generate", "count": verbs["generate"],
                                         "share": round(verbs["generate"] / n, 4)}
    assert got["reference"]["with_verb"]["yes"] == n - no_verb
    run_verbs = Counter(heuristic_verb_object(instruction)[0]
                        for _, _, _, instruction, _ in TASKS)
    run_no_verb = run_verbs.pop(None, 0)
    run_top = sorted(run_verbs, key=lambda v: (-run_verbs[v], v))[:15]
    assert [v["verb"] for v in got["run"]["top"]] == run_top
    shared = [v for v in ref_top if v in run_top]
    assert got["overlap"]["shared"] == shared and got["overlap"]["count"] == len(shared) == 4
    assert got["overlap"]["jaccard"] == round(len(shared) / len(set(ref_top) | set(run_top)), 4)
    assert {r["verb"] for r in got["rows"]} == set(ref_top) | set(run_top)
    translate = next(r for r in got["rows"] if r["verb"] == "translate")
    assert translate["reference_rank"] == [v for v, _ in ranked].index("translate") + 1
    assert translate["difference_points"] == round(
        (run_verbs["translate"] / 6 - verbs["translate"] / n) * 100, 4)
    # total variation over every verb and "no verb", written out from the counts
    p = {v: c / 6 for v, c in run_verbs.items()} | {None: run_no_verb / 6}
    q = {v: c / n for v, c in verbs.items()} | {None: no_verb / n}
    tv = 0.5 * sum(abs(p.get(v, 0) - q.get(v, 0)) for v in set(p) | set(q))
    assert got["total_variation"] == round(tv, 4)


@pytest.mark.slow
def test_the_run_column_equals_the_runs_own_statistics(run_dir, alpaca):
    stats = collect_statistics(load_run(run_dir), None, None, verb_parser=None,
                               reference=load_run(alpaca))
    words = stats["lengths"]["words"]
    for field in ("instruction", "input", "output"):
        assert stats["reference"]["lengths"][field]["run"] == {
            key: words[field][key] for key in ("count", "mean", "p50", "p90")}
    assert stats["reference"]["verbs"]["run"]["with_verb"]["yes"] == stats["verbs"]["with_verb"]
    assert stats["reference"]["examples"]["run"] - stats["counts"]["empty_inputs"] \
        == stats["reference"]["with_input"]["run"]["yes"]


# -- the command: --json, the tables, the report ------------------------------------------


@pytest.mark.slow
def test_json_has_the_documented_reference_section(run_dir, alpaca):
    result = cli("inspect", str(run_dir), "--reference", ALPACA_AS_GIVEN, "--json", cwd=REPO)
    assert result.returncode == 0, result.stderr
    ref = json.loads(result.stdout)["reference"]
    assert set(ref) == {"source", "identical", "examples", "tasks", "with_input", "lengths",
                        "verbs"}
    assert ref["source"] == {
        "path": ALPACA_AS_GIVEN, "name": "alpaca_data.json", "kind": "file",
        "sha256": hashlib.sha256(alpaca.read_bytes()).hexdigest(), "sha256_of": "file",
        "bytes": alpaca.stat().st_size, "rows": 52002, "content_sha256": None}
    assert ref["identical"] is False
    assert set(ref["with_input"]) == {"run", "reference", "difference_points"}
    assert set(ref["with_input"]["reference"]) == {"yes", "n", "share", "low", "high"}
    assert set(ref["lengths"]) == {"unit", "instruction", "input", "output"}
    for field in ("instruction", "input", "output"):
        assert set(ref["lengths"][field]) == {"run", "reference", "ratio"}
        assert set(ref["lengths"][field]["reference"]) == {"count", "mean", "p50", "p90"}
        assert set(ref["lengths"][field]["ratio"]) == {"mean", "p50", "p90"}
    verbs = ref["verbs"]
    assert set(verbs) == {"method", "top", "run", "reference", "with_verb_difference_points",
                          "rows", "overlap", "total_variation"}
    assert verbs["top"] == 15 and len(verbs["reference"]["top"]) == 15
    assert set(verbs["rows"][0]) == {"verb", "run_share", "reference_share", "difference_points",
                                     "run_rank", "reference_rank"}
    assert set(verbs["overlap"]) == {"shared", "count", "of", "jaccard"}


@pytest.mark.slow
def test_the_terminal_shows_the_comparison_table(inspected, raw):
    result, _ = inspected
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Compared with alpaca_data.json" in out
    assert "Compared with alpaca_data.json: leading verbs" in out
    share = (raw["input"] != "").mean()
    line = next(line for line in out.splitlines() if "examples with a non-empty input" in line)
    assert f"{share:.1%} (" in line and "55.6% (" in line
    assert f"{(5 / 9 - share) * 100:+.1f} pts" in line
    median = next(line for line in out.splitlines() if "output, words: median" in line)
    assert re.search(r"\b1\b.*\b30\b.*×0\.0333", median), median


@pytest.mark.slow
def test_the_report_has_a_reference_section_with_table_and_figure(inspected):
    result, report = inspected
    assert result.returncode == 0, result.stderr
    page = (report / "index.html").read_text(encoding="utf-8")

    class Sections(HTMLParser):
        def __init__(self):
            super().__init__()
            self.section, self.inside = None, {"h2": [], "img": []}
            self._h2 = False

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "section":
                self.section = attrs.get("id")
            elif self.section == "reference" and tag == "h2":
                self._h2 = True
            elif self.section == "reference" and tag == "img":
                self.inside["img"].append(attrs["alt"])

        def handle_endtag(self, tag):
            if tag == "section":
                self.section = None
            self._h2 = self._h2 and tag != "h2"

        def handle_data(self, data):
            if self._h2:
                self.inside["h2"].append(data)

    parsed = Sections()
    parsed.feed(page)
    assert parsed.inside["h2"] == ["Compared with alpaca_data.json",
                                   "Compared with alpaca_data.json: leading verbs"]
    assert parsed.inside["img"] == ["reference_verbs"]
    assert (report / "reference_verbs.png").stat().st_size > 1000
    assert json.loads((report / "stats.json").read_text())["reference"]["source"]["rows"] == 52002


# -- user mistakes ------------------------------------------------------------------------


@pytest.mark.fast_cases("absent")
@pytest.mark.parametrize("make, expected", [
    pytest.param(lambda t: t / "absent.json", "absent.json: no such file or directory",
                 id="absent"),
    pytest.param(lambda t: (t / "e").mkdir() or t / "e", "e: no manifest.json", id="empty-dir"),
    pytest.param(lambda t: (t / "a.json").write_text('[{"instruction": "x"}]') and t / "a.json",
                 "a.json: field 'output': missing column", id="no-output"),
    pytest.param(lambda t: (t / "b.json").write_text("[{") and t / "b.json", "b.json",
                 id="bad-json"),
    pytest.param(lambda t: (t / "c.txt").write_text("x") and t / "c.txt",
                 "c.txt: unsupported format '.txt'", id="txt"),
])
def test_a_bad_reference_is_one_line_exit_2_and_writes_nothing(tmp_path, run_dir, make,
                                                               expected):
    report = tmp_path / "report"
    result = cli("inspect", str(run_dir), "--reference", str(make(tmp_path)),
                 "--report", str(report))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("Error: --reference: ") and expected in lines[0]
    assert not report.exists() and result.stdout == ""


@pytest.mark.slow
def test_the_report_may_not_go_into_the_reference(tmp_path, run_dir):
    records = tmp_path / "records"
    records.mkdir()
    (records / "a.jsonl").write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    result = cli("inspect", str(run_dir), "--reference", str(records), "--report", str(records))
    assert result.returncode == 2 and "--report is --reference" in result.stderr
    assert sorted(p.name for p in records.iterdir()) == ["a.jsonl"]


# -- the pure function on small data (fast) -------------------------------------------------


def test_the_run_against_itself_differs_by_nothing(run_dir):
    run = load_run(run_dir)
    ref = reference_statistics(run, load_run(run_dir), verb_parser=None)
    assert ref["identical"] is True
    assert ref["source"]["kind"] == "run" and ref["source"]["sha256_of"] == "manifest.json"
    assert ref["source"]["sha256"] == file_digest(run_dir / "manifest.json")
    assert ref["examples"]["ratio"] == ref["tasks"]["ratio"] == 1.0
    assert ref["with_input"]["difference_points"] == 0.0
    assert ref["with_input"]["run"] == ref["with_input"]["reference"]
    for field in ("instruction", "input", "output"):
        assert ref["lengths"][field]["ratio"] == {"mean": 1.0, "p50": 1.0, "p90": 1.0}
    verbs = ref["verbs"]
    assert verbs["with_verb_difference_points"] == 0.0 and verbs["total_variation"] == 0.0
    assert verbs["overlap"]["jaccard"] == 1.0 and verbs["overlap"]["count"] == 5
    assert all(r["difference_points"] == 0.0 and r["run_rank"] == r["reference_rank"]
               for r in verbs["rows"])
    table = reference_tables(ref)[0]
    assert {row[0]: row[3] for row in table.rows}["examples with a non-empty input"] \
        == "+0.0 pts"
    assert "it holds the same examples as the run" in table.note


def test_a_directory_of_records_is_traced_by_its_content(tmp_path, run_dir):
    folder = tmp_path / "records"
    folder.mkdir()
    rows = [{"instruction": r["instruction"], "input": r["input"], "output": r["output"]}
            for r in small_run_rows()]
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, other = load_run(run_dir), load_run(folder)
    ref = reference_statistics(run, other, verb_parser=None)
    assert ref["identical"] is True and ref["source"]["sha256"] is None
    expected = hashlib.sha256("".join(
        json.dumps([r["instruction"], r["input"], r["output"]], ensure_ascii=False,
                   separators=(",", ":")) + "\n" for r in rows).encode()).hexdigest()
    assert ref["source"]["content_sha256"] == expected == content_digest(run)
    # one changed output: no longer identical, and the digest moves
    rows[0]["output"] += "!"
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    changed = reference_statistics(run, load_run(folder), verb_parser=None)
    assert changed["identical"] is False
    assert changed["source"]["content_sha256"] != expected


def test_shares_and_ratios_follow_the_counts(tmp_path, run_dir):
    path = tmp_path / "ref.jsonl"
    records = ([{"instruction": "Write a poem about rain.", "input": "", "output": "a b c d"}] * 3
               + [{"instruction": f"Sort list {k}.", "input": "3 1 2", "output": "1 2 3 4"}
                  for k in range(1)])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ref = reference_statistics(load_run(run_dir), load_run(path), verb_parser=None)
    # the three identical rows are one task: 2 tasks, 4 examples, 1 with an input
    assert ref["examples"] == {"run": 9, "reference": 4, "ratio": 2.25}
    assert ref["tasks"] == {"run": 6, "reference": 2, "ratio": 3.0}
    assert ref["with_input"]["reference"]["share"] == 0.25
    assert ref["with_input"]["difference_points"] == round((5 / 9 - 1 / 4) * 100, 4)
    assert ref["lengths"]["output"]["reference"]["p50"] == 4
    assert ref["lengths"]["output"]["ratio"]["p50"] == 0.25  # the run's median output: 1 word
    rows = {r["verb"]: r for r in ref["verbs"]["rows"]}
    assert rows["write"]["reference_share"] == 0.5 and rows["sort"]["reference_share"] == 0.5
    assert rows["write"]["difference_points"] == round((1 / 6 - 1 / 2) * 100, 4)
    assert rows["sort"]["run_rank"] is None
    assert ref["verbs"]["overlap"]["shared"] == ["write"]


def test_an_empty_run_compares_without_numbers(tmp_path, run_dir):
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"instruction": pd.Series([], dtype=str), "input": pd.Series([], dtype=str),
                  "output": pd.Series([], dtype=str)}).to_parquet(empty)
    ref = reference_statistics(load_run(empty), load_run(run_dir), verb_parser=None)
    assert ref["examples"] == {"run": 0, "reference": 9, "ratio": 0.0}
    assert ref["with_input"]["run"]["share"] is None
    assert ref["with_input"]["difference_points"] is None
    assert ref["lengths"]["output"]["ratio"]["p50"] is None
    assert ref["verbs"]["total_variation"] is None
    table = reference_tables(ref)[0]
    assert {row[0]: row[1] for row in table.rows}["examples with a non-empty input"] == "—"
    assert ref["verbs"]["overlap"] == {"shared": [], "count": 0, "of": 15, "jaccard": 0.0}
