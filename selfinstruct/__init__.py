"""selfinstruct: the Self-Instruct pipeline (Wang et al., ACL 2023) on vLLM.

Seed tasks are bootstrapped into new (instruction, input, output) examples for
supervised fine-tuning (SFT). Importing this package is cheap: the engine
(vLLM, torch) is imported only when a model is actually run.
"""

__version__ = "0.1.0"
