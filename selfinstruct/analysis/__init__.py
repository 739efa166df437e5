"""Inspecting and exporting runs: loading, statistics, figures, tables, the HTML report,
SFT formats and the dataset card."""
