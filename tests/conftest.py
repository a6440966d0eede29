"""Shared test settings: the pallet-standard fixture, and CI's rule that nothing skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import pallet_standard

REPO_DIR = Path(__file__).resolve().parents[1]
COMPONENT_MARKERS = ("docker", "containerd", "registry", "systemd")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-components",
        action="store_true",
        default=os.environ.get("FORKLIFT_BOOT_REQUIRE_COMPONENTS") == "1",
        help="fail instead of skipping when a real component (docker, registry, ...) is missing, "
        "and fail the run if any test skips (CI; env FORKLIFT_BOOT_REQUIRE_COMPONENTS=1)",
    )


def require_component(config: pytest.Config, reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where every component must be there."""
    if config.getoption("--require-components"):
        pytest.fail(f"required component missing: {reason}", pytrace=False)
    pytest.skip(reason)


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a gap, not a pass: fail the run and name each one."""
    if _skipped and session.config.getoption("--require-components"):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"error: {len(_skipped)} test(s) skipped in CI: {_skipped}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def pallet_standard_dir() -> Path:
    """PlanktoScope's pallet-standard at its pinned commit (tests/pallet_standard.py): a failure,
    never a skip, when there is no copy and none can be fetched."""
    try:
        return pallet_standard.locate()
    except pallet_standard.PalletStandardUnavailable as error:
        message = str(error)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback
