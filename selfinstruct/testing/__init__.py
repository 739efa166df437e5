"""Helpers for tests and benchmarks only (never imported by a command): a scripted engine,
a local vLLM server."""
