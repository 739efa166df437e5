"""A fixed small run (shards + manifest, as `generate` writes them) for the
inspect / export / hand-off tests: 6 tasks, 9 rows, 2 rounds, no engine needed."""

from __future__ import annotations

import json
from pathlib import Path

from selfinstruct.dedup import rouge_l
from selfinstruct.storage.manifest import MANIFEST
from selfinstruct.storage.shards import ShardWriter, messages_for
from selfinstruct.storage.files import file_digest, write_json

SEEDS = [
    {"id": "seed_1", "name": "poem", "instruction": "Write a short poem about the ocean.",
     "instances": [{"input": "", "output": "Waves roll in, waves roll out."}],
     "is_classification": False},
    {"id": "seed_2", "name": "sentiment",
     "instruction": "Classify the sentiment of the sentence as positive or negative.",
     "instances": [{"input": "I love it.", "output": "positive"}], "is_classification": True},
    {"id": "seed_3", "name": "spanish", "instruction": "Translate the sentence into Spanish.",
     "instances": [{"input": "Thank you.", "output": "Gracias."}], "is_classification": False},
    {"id": "seed_4", "name": "tips", "instruction": "Give three tips for staying healthy.",
     "instances": [{"input": "", "output": "Sleep, move, eat well."}],
     "is_classification": False},
]

# (task_id, round, is_classification, instruction, [(input, output), ...])
TASKS = [
    ("r0001-0000", 1, False, "Write a haiku about autumn leaves.",
     [("", "Red leaves drift down slow,\nwind hums through the bare branches,\nthe year exhales."),
      ("", "Crisp air, golden light;\nthe maple lets go its leaves,\none by one they fall.")]),
    ("r0001-0001", 1, True, "Classify the review as positive or negative.",
     [("The food was great.", "positive"), ("Terrible service, cold soup.", "negative")]),
    ("r0001-0002", 1, False, "Generate a list of three fruits.",
     [("", "apple, banana, cherry")]),
    ("r0002-0000", 2, False, "Translate the sentence into French.",
     [("Good morning.", "Bonjour.")]),
    ("r0002-0001", 2, False, "Explain how a rainbow forms.",
     [("", ("Sunlight is refracted, reflected and dispersed in raindrops, splitting it into "
            "its colours."))]),
    ("r0002-0002", 2, True, "Is the number even or odd?",
     [("4", "even"), ("7", "odd")]),
]

MODEL_NAME = "TinyTest"

STATS = {
    "rounds": 2, "candidates": 40, "kept_instructions": 9, "tasks_written": 6,
    "rows_written": 9, "classification_tasks": 2,
    "rejections": {"blacklist:image": 3, "no_instances": 2, "rouge_l": 20, "too_short": 5,
                   "unparseable": 3, "unparseable_instances": 1},
    "instance_rejections": {"duplicate_instance": 2},
    "engine": {"requests": 30, "prompt_tokens": 5000, "output_tokens": 2000, "seconds": 10.0,
               "output_tokens_per_second": 200.0, "by_stage": {}},
    "seconds": 11.0,
}


def rows() -> list[dict]:
    """The shard rows of the run, in order."""
    seeds = [s["instruction"] for s in SEEDS]
    out = []
    for task_id, number, cls, instruction, instances in TASKS:
        scores = [rouge_l(instruction, s) for s in seeds]
        best = max(range(len(seeds)), key=lambda k: scores[k])
        for k, (input_text, output) in enumerate(instances):
            out.append({
                "id": f"{task_id}-{k}", "task_id": task_id, "instruction": instruction,
                "input": input_text, "output": output,
                "messages": messages_for(instruction, input_text, output),
                "is_classification": cls, "model": MODEL_NAME, "round": number,
                "prompt_task_ids": ["seed_1", "seed_2"],
                "nearest_instruction": seeds[best] if scores[best] else None,
                "nearest_rouge_l": scores[best] or None,
            })
    return out


def write_small_run(base: Path, name: str = "run", model_path: str | None = None) -> Path:
    """Write seeds (``base/seeds.jsonl``) and the run (``base/name``); return the run dir."""
    base.mkdir(parents=True, exist_ok=True)
    seeds = base / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    out = base / name
    writer = ShardWriter(out, shard_size=4)
    writer.add(rows())
    shards = writer.close()
    write_json(out / MANIFEST, {
        "format": "selfinstruct-shards/1",
        "created": "2026-01-01T00:00:00+00:00",
        "files": [{"path": s.path, "rows": s.rows, "sha256": s.sha256} for s in shards],
        "rows": sum(s.rows for s in shards),
        "tasks": len(TASKS),
        "model": {"name": MODEL_NAME, "path": model_path or str(base / "no-such-model"),
                  "source": "directory", "gguf_sha256": None},
        "seeds": {"path": str(seeds), "tasks": len(SEEDS),
                  "files": [{"path": str(seeds), "sha256": file_digest(seeds)}]},
        "config": {"seed": 3, "num_instructions": 6,
                   "generation": {"prompt_tasks": 8, "temperature": 0.7, "top_p": 0.5},
                   "filters": {"min_words": 4, "max_words": 150, "rouge_threshold": 0.7,
                               "rouge_tokenizer": "rouge"}},
        "versions": {"selfinstruct": "test"},
        "stats": STATS,
    })
    return out
