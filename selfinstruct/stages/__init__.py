"""The model-calling stages of a round (Self-Instruct §2.2), one module each; see :mod:`.base`."""
