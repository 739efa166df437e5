"""The review page driven in a real browser (headless Chromium through chromedriver).

A real ``selfinstruct review`` server (a subprocess) on a judged run: answer
examples with the keyboard alone, go back and change an answer, write a note,
reload the page, kill the server mid-review and start it again, and read the
labels file on disk after each step. Skipped when Chromium, chromedriver
(Debian: ``chromium``, ``chromium-driver``) or selenium is missing; ``.ci/run``
installs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.judge_fakes import make_judged_run

selenium = pytest.importorskip("selenium", reason="selenium not installed (pip install selenium)")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver") or next(
    (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()),
    None)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="headless Chromium or chromedriver not installed (apt-get install chromium "
           "chromium-driver)")]

ROOT = Path(__file__).resolve().parent.parent
SIZE = 5


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory) -> Path:
    run = make_judged_run(tmp_path_factory.mktemp("judged"))
    rows = pd.read_parquet(run / "data")
    assert len(rows) >= SIZE, "the scripted run is too small for this test"
    return run


class Server:
    """``selfinstruct review`` as a subprocess; ``url`` from its "Open ..." line."""

    def __init__(self, run: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "selfinstruct.cli", "review", str(run), "--reviewer", "ann",
             "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        assert self.process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r"Open (http://\S+)", line)
            if match:
                self.url = match.group(1)
                return
        self.process.kill()
        raise AssertionError(f"no URL from the review server: {self.lines} "
                             f"{self.process.stderr.read() if self.process.stderr else ''}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-background-networking",
                "--disable-component-update", "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def keys(driver: webdriver.Chrome, *pressed: str) -> None:
    """Press keys on the page (sent to the focused element, as a person's would be)."""
    chain = ActionChains(driver)
    for key in pressed:
        chain.send_keys(key)
    chain.perform()


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def wait_text(driver: webdriver.Chrome, element_id: str, pattern: str) -> str:
    """Wait until element ``element_id``'s text matches ``pattern``; return it."""
    WebDriverWait(driver, 20).until(
        lambda d: re.search(pattern, d.find_element(By.ID, element_id).text))
    return text(driver, element_id)


def wait_saved(driver: webdriver.Chrome, answered: int) -> None:
    """Wait until the page shows ``answered`` examples done and nothing is in flight."""
    wait_text(driver, "progress-text", rf"^{answered} / {SIZE} answered$")
    wait_text(driver, "saved", r"^saved$")


def labels_on_disk(run: Path) -> dict[str, tuple]:
    """The labels file read back: example id -> (instruction, input, output, note)."""
    frame = pd.read_parquet(run / "review" / "labels-ann.parquet")
    return {row.example_id: (None if pd.isna(row.instruction) else bool(row.instruction),
                             None if pd.isna(row.input) else bool(row.input),
                             None if pd.isna(row.output) else bool(row.output), row.note)
            for row in frame.itertuples()}


def chosen(driver: webdriver.Chrome) -> list[str | None]:
    """The answer shown as chosen on each question ("yes", "no" or None)."""
    out = []
    for row in driver.find_elements(By.CSS_SELECTOR, "#questions .question"):
        picked = row.find_elements(By.CSS_SELECTOR, "button.chosen")
        out.append(picked[0].get_attribute("data-answer") if picked else None)
    return out


def test_a_review_by_keyboard_survives_reload_and_a_killed_server(judged_run, tmp_path,
                                                                  browser):
    run = tmp_path / "run"
    shutil.copytree(judged_run, run)
    server = Server(run, "--sample", str(SIZE), "--seed", "7")
    try:
        sample = (run / "review" / "sample.json").read_bytes()
        ids = [e["id"] for e in json.loads(sample)["examples"]]
        assert len(ids) == SIZE
        browser.get(server.url)
        assert wait_text(browser, "position", r"Example 1 of") == f"Example 1 of {SIZE}"
        assert text(browser, "progress-text") == f"0 / {SIZE} answered"
        assert browser.find_element(By.ID, "instruction").text  # the example is shown
        # the judge's verdict stays hidden until all three questions are answered
        assert "once you have answered" in text(browser, "judge")
        keys(browser, "y", "y")
        wait_text(browser, "saved", "^saved$")
        assert "once you have answered" in text(browser, "judge")
        assert labels_on_disk(run) == {ids[0]: (True, True, None, "")}
        keys(browser, "n")
        wait_saved(browser, 1)
        assert labels_on_disk(run) == {ids[0]: (True, True, False, "")}
        assert "Judge" in text(browser, "judge") and "/ 5" in text(browser, "judge")

        # the next two examples, keys only
        keys(browser, "\ue014")  # ArrowRight
        wait_text(browser, "position", r"^Example 2 of")
        assert "once you have answered" in text(browser, "judge")
        keys(browser, "y", "n", "y")
        wait_saved(browser, 2)
        keys(browser, "\ue007")  # Enter moves on too
        wait_text(browser, "position", r"^Example 3 of")
        keys(browser, "n", "n", "n")
        wait_saved(browser, 3)
        assert labels_on_disk(run) == {ids[0]: (True, True, False, ""),
                                       ids[1]: (True, False, True, ""),
                                       ids[2]: (False, False, False, "")}

        # back to the first and change the output's answer; add a note
        keys(browser, "\ue012", "\ue012")  # ArrowLeft twice
        wait_text(browser, "position", r"^Example 1 of")
        assert chosen(browser) == ["yes", "yes", "no"]
        keys(browser, "3", "y")
        wait_saved(browser, 3)
        keys(browser, "e", "too short", "\ue00c")  # e, type, Escape
        WebDriverWait(browser, 20).until(lambda d: labels_on_disk(run)[ids[0]][3] == "too short")
        assert labels_on_disk(run)[ids[0]] == (True, True, True, "too short")
        assert chosen(browser) == ["yes", "yes", "yes"]

        # reload: the page comes back on the same example with its answers
        browser.refresh()
        wait_text(browser, "position", r"^Example 1 of")
        assert text(browser, "progress-text") == f"3 / {SIZE} answered"
        assert chosen(browser) == ["yes", "yes", "yes"]
        assert browser.find_element(By.ID, "note").get_attribute("value") == "too short"
        assert "Judge" in text(browser, "judge")

        # an answer half given when the server is killed is on disk
        keys(browser, "u")  # to the first unanswered example
        wait_text(browser, "position", r"^Example 4 of")
        keys(browser, "y")
        wait_text(browser, "saved", "^saved$")
        server.kill()
        assert labels_on_disk(run)[ids[3]] == (True, None, None, "")

        # a new server on a new port goes on with the same sample and answers
        server = Server(run)
        assert (run / "review" / "sample.json").read_bytes() == sample
        assert "(3 answered)" in "".join(server.lines)
        browser.get(server.url)
        wait_text(browser, "position", r"^Example 4 of")
        assert text(browser, "progress-text") == f"3 / {SIZE} answered"
        assert chosen(browser) == ["yes", None, None]
        keys(browser, "y", "y")  # the highlight starts at the first open question
        wait_saved(browser, 4)
        keys(browser, "u")
        wait_text(browser, "position", r"^Example 5 of")
        keys(browser, "y", "y", "n")
        wait_saved(browser, 5)
        assert not browser.find_element(By.ID, "done").get_attribute("hidden")
        assert "All 5 examples are answered" in text(browser, "done")
        on_disk = labels_on_disk(run)
        assert set(on_disk) == set(ids)
        assert on_disk[ids[3]] == (True, True, True, "")
        assert on_disk[ids[4]] == (True, True, False, "")
        assert server.stop() == 0
    finally:
        if server.process.poll() is None:
            server.kill()
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
