"""Shared fixtures (paths to the real data beside the checkout) and the test tiers.

Tiers (markers in pyproject.toml):

* ``engine``: needs vLLM or the embedded model (a GGUF conversion, its tokenizer).
* ``slow``: needs neither, but takes seconds (dozens of CLI subprocesses, real
  signals and timeouts, a browser, the 52k records of the shared data).
* The fast tier is ``pytest -m "not engine and not slow"`` (``make test-fast``);
  plain ``pytest`` (``make test``, what CI runs) runs everything.

A parametrized test may run only some of its cases in the fast tier:
``@pytest.mark.fast_cases(rule)`` marks every other case ``slow``. ``rule`` is a
callable taking the case's parameters as keyword arguments and returning True for
a fast case, or one or more case ids (the part of the test id inside ``[...]``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SELF_INSTRUCT_SEEDS = SHARED_DATA / "self_instruct_seed_tasks.jsonl"
ALPACA = SHARED_DATA / "alpaca_data.json"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


def _is_fast_case(item: pytest.Item, marker: pytest.Mark) -> bool:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        raise pytest.UsageError(f"{item.nodeid}: fast_cases on a test that is not parametrized")
    if len(marker.args) == 1 and callable(marker.args[0]):
        return bool(marker.args[0](**callspec.params))
    return callspec.id in marker.args


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``slow`` the cases that a ``fast_cases`` rule leaves out of the fast tier.

    Raises:
        pytest.UsageError: a rule on a test without parameters, or a rule naming a
            case id the test does not have (a typo would quietly make every case slow).
    """
    named: dict[str, set[str]] = {}
    seen: dict[str, set[str]] = {}
    for item in items:
        marker = item.get_closest_marker("fast_cases")
        if marker is None:
            continue
        if not _is_fast_case(item, marker):
            item.add_marker(pytest.mark.slow)
        if not (len(marker.args) == 1 and callable(marker.args[0])):
            test = item.nodeid.split("[")[0]
            named.setdefault(test, set()).update(marker.args)
            seen.setdefault(test, set()).add(item.callspec.id)
    if any("::" in arg for arg in config.args):
        return  # tests picked by node id: their other cases were never collected
    for test, ids in named.items():
        if ids - seen[test]:
            raise pytest.UsageError(f"{test}: fast_cases names no such case: "
                                    f"{', '.join(sorted(ids - seen[test]))}")
