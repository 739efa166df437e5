"""The hand-off to a real trainer: TRL's SFTTrainer trains on the `messages` export.

A random-weight two-layer LlamaForCausalLM with the embedded model's tokenizer
(and its chat template) trains two steps on CPU; nothing is downloaded.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.small_run import rows, write_small_run

BIN = Path(sys.executable).parent / "selfinstruct"

# torch, transformers and TRL, and the embedded model's tokenizer (a GGUF conversion on
# a machine that has not made one yet)
pytestmark = pytest.mark.engine


def test_sft_trainer_trains_two_steps_on_the_messages_export(tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from selfinstruct.models import resolve_model

    run_dir = write_small_run(tmp_path / "run")
    out = tmp_path / "export"
    result = subprocess.run(
        [str(BIN), "export", str(run_dir), "--format", "messages", "--output", str(out),
         "--tokenizer", "none"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    train = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    assert train.num_rows == 9

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None).path, local_files_only=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    args = SFTConfig(
        output_dir=str(tmp_path / "trainer"), max_steps=2, per_device_train_batch_size=2,
        learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=True, bf16=False, max_length=256, dataloader_num_workers=0,
        disable_tqdm=True, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)

    # The trainer rendered the conversations with the model's chat template.
    first = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert "<|im_start|>user\n" + rows()[0]["instruction"] in first
    assert "<|im_start|>assistant\n" + rows()[0]["output"] in first

    output = trainer.train()
    assert output.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert math.isfinite(output.training_loss)
