"""The HTML report opens in a real browser (headless Chromium) with its figures.

The page sets ``data-figures-loaded="k/n"`` on <body> after its load event
(k images decoded with a non-zero width); ``--dump-dom`` shows the DOM then.
Skipped when Chromium is absent (Debian package: ``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from selfinstruct.analysis.loading import load_run
from selfinstruct.analysis.report import write_report
from selfinstruct.analysis.sources import resolve_seeds
from selfinstruct.analysis.stats import collect_statistics
from tests.small_run import write_small_run

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")]


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)


def test_report_opens_in_chromium_with_every_figure(tmp_path):
    run = load_run(write_small_run(tmp_path / "data"))
    stats = collect_statistics(run, resolve_seeds(run), None, sample=2)
    written = write_report(stats, tmp_path / "report")
    figures = sorted(p.stem for p in (tmp_path / "report").glob("*.png"))
    assert figures == ["lengths_words", "rejections", "rouge_seeds", "rounds", "verbs"]
    page = written["index"].read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert not re.search(r'(src|href)="(https?:|file:|/)', page)  # self-contained

    dom = chromium(tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom",
                   written["index"].as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    marker = re.search(r'data-figures-loaded="(\d+)/(\d+)"', dom.stdout)
    assert marker, dom.stdout[:2000]
    assert marker.group(1) == marker.group(2) == str(len(figures))

    shot = tmp_path / "report.png"
    result = chromium(tmp_path / "profile2", "--window-size=1200,2400",
                      f"--screenshot={shot}", written["index"].as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
