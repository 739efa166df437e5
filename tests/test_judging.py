"""The judging stage in the loop, with the scripted engine: scores in shards and ledger,
cuts, the budget, resuming, refilter re-cuts (the real engine: test_judging_e2e.py)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from selfinstruct.config import Config
from selfinstruct.engines.recorded import LazyEngine, RecordedEngine
from selfinstruct.pipeline import SelfInstruct
from selfinstruct.prompts import PromptBuilder
from selfinstruct.quality import (JUDGE_UNPARSEABLE, QUALITY_COLUMNS, column, example_key)
from selfinstruct.storage.ledger import RunDirectory
from selfinstruct.storage.shards import JUDGED_SCHEMA, SCHEMA, ShardWriter
from selfinstruct.testing.scripted import ScriptedEngine, scripted_verdict

from .test_pipeline import SEEDS


def judged_loop(path, engine=None, source=None, n=8, generation=None, **quality):
    config = Config.model_validate({
        "num_instructions": n, "seed": 3,
        "generation": generation or {"prompts_per_round": 4, "pipeline_depth": 1},
        "quality": {"judge": True, **quality}})
    engine = engine or ScriptedEngine()
    live = LazyEngine(None) if source is not None else LazyEngine(lambda: engine)
    recorded = RecordedEngine(RunDirectory(path), live,
                              source=RunDirectory(source) if source is not None else None)
    writer = ShardWriter(path, config.shards.shard_size)
    loop = SelfInstruct(config, recorded, PromptBuilder(rubric="judge"), SEEDS, writer,
                        "scripted")
    return loop, engine, writer


def run(path, **kwargs):
    loop, engine, writer = judged_loop(path, **kwargs)
    stats = loop.run()
    shards = writer.close()
    rows = [r for s in shards for r in pq.read_table(path / s.path).to_pylist()]
    return loop, engine, stats, rows


def ledger_records(path, stage="judging"):
    return [r for f in sorted(path.glob(f"ledger/round-*/requests-{stage}.parquet"))
            for r in pq.read_table(f).to_pylist()]


def test_every_row_has_the_judges_scores_and_every_judgement_is_in_the_ledger(tmp_path):
    _, engine, stats, rows = run(tmp_path)
    assert rows and stats.tasks_written == 8
    schema = pq.read_schema(next(tmp_path.glob("data/*.parquet")))
    assert schema.equals(JUDGED_SCHEMA) and set(QUALITY_COLUMNS) <= set(schema.names)
    records = {r["key"]: r for r in ledger_records(tmp_path)}
    # with no cut only the candidates the target takes are judged: nothing judged is unused
    assert len(records) == len(rows)
    for row in rows:
        key = example_key(row["instruction"], row["input"], row["output"])
        assert key in records, "each row's judge request is recorded"
        assert records[key]["text"] == scripted_verdict(key)
        assert row["quality_judge"] == "scripted"
        if key.startswith("f"):
            assert row[column("overall")] is None and row["quality_reason"] == JUDGE_UNPARSEABLE
        else:
            verdict = json.loads(scripted_verdict(key))
            assert row[column("overall")] == verdict["overall"]
            assert row[column("output")] == verdict["output"]["score"]
            assert row["quality_output_rationale"] == "Plausible."
            assert row["quality_reason"] is None
    judged_batches = [b for b in engine.batches if b[0].stage == "judging"]
    assert all(r.chat and r.sampling.temperature == 0.0 for b in judged_batches for r in b)
    assert stats.judged >= len(rows)
    assert stats.engine.by_stage["judging"]["requests"] == len(records)
    candidates = [r for f in sorted(tmp_path.glob("ledger/round-*/candidates.parquet"))
                  for r in pq.read_table(f).to_pylist()]
    written = [c for c in candidates if c["stage"] == "written"]
    assert all(c["quality"] is not None and len(c["quality"]) == c["instances"]
               for c in written)


def test_a_run_without_the_judge_writes_the_old_schema(tmp_path):
    from .test_pipeline import run as plain_run

    _, engine, _, shards = plain_run(tmp_path, n=4)
    assert pq.read_schema(tmp_path / shards[0].path).equals(SCHEMA)
    assert all(b[0].stage != "judging" for b in engine.batches)


def test_a_cut_drops_low_scores_and_unparseable_verdicts_with_reasons(tmp_path):
    _, _, everything, all_rows = run(tmp_path / "all", n=12)
    _, _, stats, rows = run(tmp_path / "cut", n=12, min_overall=3.0)
    assert rows and all(r[column("overall")] >= 3 for r in rows)
    assert stats.instance_rejections["low_quality"] > 0
    assert everything.instance_rejections["low_quality"] == 0
    assert any(r[column("overall")] is None for r in all_rows)
    assert all(r[column("overall")] is not None for r in rows)
    candidates = [r for f in sorted((tmp_path / "cut").glob("ledger/*/candidates.parquet"))
                  for r in pq.read_table(f).to_pylist()]
    dropped = [(score, kept) for c in candidates if c["quality"]
               for score, kept in zip(c["quality"], c["quality_kept"], strict=True) if not kept]
    assert dropped and all(score is None or score < 3 for score, _ in dropped)


def test_a_cut_on_one_question(tmp_path):
    _, _, _, rows = run(tmp_path, n=6, min_output=4.0)
    assert rows and all(r[column("output")] >= 4 for r in rows)


def test_keep_best_takes_the_highest_scores_in_run_order(tmp_path):
    _, _, everything, all_rows = run(tmp_path / "all", n=10)
    _, _, stats, rows = run(tmp_path / "best", n=10, keep_best=5, diversity_threshold=1.0)
    assert len(rows) == 5 and stats.selection["selected"] == 5
    scored = sorted((r[column("overall")] for r in all_rows if r[column("overall")] is not None),
                    reverse=True)
    assert sorted((r[column("overall")] for r in rows), reverse=True) == scored[:5]
    ids = [r["id"] for r in all_rows]
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), key=ids.index)
    assert stats.rows_written == everything.rows_written, "the budget does not change the rounds"
    manifestless = sorted(p.name for p in (tmp_path / "best" / "data").iterdir())
    assert manifestless == ["shard-00000.parquet"]


def test_keep_best_skips_near_duplicate_instructions_of_other_tasks(tmp_path):
    _, _, stats, rows = run(tmp_path, n=10, keep_best=8, diversity_threshold=0.5)
    from selfinstruct.dedup import rouge_l

    assert stats.selection["skipped_near_duplicate"] > 0
    chosen = {r["task_id"]: r["instruction"] for r in rows}
    for a, b in [(a, b) for a in chosen for b in chosen if a < b]:
        assert rouge_l(chosen[a], chosen[b]) <= 0.5


def test_resume_after_a_crash_in_judging_asks_nothing_twice(tmp_path):
    class Crash(Exception):
        pass

    class DiesWhileJudging(ScriptedEngine):
        def generate(self, requests, progress=None, on_done=None):
            if requests[0].stage == "judging" and sum(
                    b[0].stage == "judging" for b in self.batches) == 1:
                self.batches.append(list(requests))
                raise Crash()
            return super().generate(requests, progress, on_done)

    _, _, _, reference = run(tmp_path / "ref", n=10)
    dying = DiesWhileJudging()
    loop, _, _ = judged_loop(tmp_path / "run", engine=dying, n=10)
    with pytest.raises(Crash):
        loop.run()
    crashed = [r.key for r in dying.batches[-1]]
    again = ScriptedEngine()
    _, _, _, rows = run(tmp_path / "run", engine=again, n=10)
    assert rows == reference
    # round 1 replays from the ledger and round 2's earlier stages were recorded: the
    # first request sent is the judging batch that died, asked once more, whole
    assert again.batches[0][0].stage == "judging"
    assert [r.key for r in again.batches[0]] == crashed
    recorded_round1 = {r["key"] for r in pq.read_table(
        tmp_path / "run" / "ledger/round-00001/requests-judging.parquet").to_pylist()}
    asked_again = {r.key for b in again.batches if b[0].stage == "judging" for r in b}
    assert recorded_round1 and not recorded_round1 & asked_again


def test_refilter_recuts_from_recorded_verdicts_without_an_engine(tmp_path):
    _, _, _, all_rows = run(tmp_path / "src", n=10)
    _, engine, stats, rows = run(tmp_path / "re", source=tmp_path / "src", n=10,
                                 min_overall=4.0)
    assert not engine.batches, "no model call"
    assert rows and all(r[column("overall")] >= 4 for r in rows)
    source = {(r["instruction"], r["input"], r["output"]) for r in all_rows}
    assert {(r["instruction"], r["input"], r["output"]) for r in rows} <= source
    assert stats.instance_rejections["low_quality"] > 0
    _, _, _, same = run(tmp_path / "same", source=tmp_path / "src", n=10)
    assert same == all_rows


def test_a_judge_served_elsewhere_judges_while_the_generator_generates(tmp_path):
    """--judge-base-url: the judge's requests go to its endpoint (chat, with the verdict's
    JSON schema as response_format), the generator never sees one, and rows, identity and
    manifest name the served judge."""
    from selfinstruct import run as run_module
    from selfinstruct.cli import GENERATE_OPTIONS
    from selfinstruct.seeds import default_seeds_dir

    from .judge_fakes import VerdictServer

    seeds = tmp_path / "seeds.jsonl"
    with open(default_seeds_dir() / "seed_tasks.jsonl", encoding="utf-8") as source:
        seeds.write_text("".join(source.readlines()[:12]), encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    generator = ScriptedEngine()
    with VerdictServer(models=("big-judge",)) as server:
        options = dict.fromkeys(GENERATE_OPTIONS)
        options.update(seeds=seeds, model=str(model), output=tmp_path / "run",
                       num_instructions=4, seed=3, prompts_per_round=2, judge=True,
                       judge_base_url=[server.url])
        job = run_module.GenerateJob.prepare(None, options, GENERATE_OPTIONS)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(run_module, "build_engine", lambda config, prepared: generator)
            job.execute()
        bodies = list(server.bodies)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    rows = [r for f in manifest["files"]
            for r in pq.read_table(tmp_path / "run" / f["path"]).to_pylist()]
    assert rows and all(r["quality_judge"] == "big-judge" for r in rows)
    assert all(b[0].stage != "judging" for b in generator.batches)
    assert len(bodies) == len(ledger_records(tmp_path / "run")) == len(rows)
    assert all(b["model"] == "big-judge" and "messages" in b
               and b["response_format"]["type"] == "json_schema" for b in bodies)
    assert manifest["identity"]["judge"]["name"] == "big-judge"
    assert manifest["backend"]["judge"]["backend"] == "http"
    assert manifest["stats"]["engine"]["by_stage"]["judging"]["requests"] == len(rows)
