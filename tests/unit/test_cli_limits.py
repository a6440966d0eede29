"""The flags that raise or lower forklift-boot's limits on slow registries and serve clients."""

from __future__ import annotations

import argparse

import pytest

from forklift_boot.cli import _build_parser
from forklift_boot.cli.options import registry_limits


def parse(*argv: str) -> argparse.Namespace:
    return _build_parser().parse_args(list(argv))


@pytest.mark.parametrize("command", [["cache-img"], ["load-img"], ["cache", "push", "r.example/x"]])
def test_registry_limits_default_to_a_minute_and_two(command: list[str]) -> None:
    limits = registry_limits(parse(*command))
    assert limits["min_rate"].min_bytes == 64 * 1024
    assert limits["min_rate"].window == 60.0
    assert limits["retry"].max_total_wait == 120.0
    assert limits["retry"].max_retry_after == 60.0


def test_registry_limits_are_raised_and_turned_off() -> None:
    limits = registry_limits(parse("cache-img", "--min-rate", "0", "--retry-wait", "600"))
    assert limits["min_rate"].min_bytes == 0  # never gives up on a slow body
    assert limits["retry"].max_total_wait == 600.0
    assert limits["retry"].max_retry_after == 300.0
    assert registry_limits(parse("cache-img", "--min-rate", "1M"))["min_rate"].min_bytes == 1 << 20


@pytest.mark.parametrize(
    "argv",
    [
        ["cache-img", "--min-rate", "fast"],
        ["cache-img", "--retry-wait", "0"],
        ["cache", "serve", "--max-connections", "0"],
        ["cache", "serve", "--header-timeout", "-1"],
    ],
)
def test_bad_limits_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    assert argv[-2] in capsys.readouterr().err


def test_serve_limits() -> None:
    defaults = parse("cache", "serve")
    assert (defaults.max_connections, defaults.header_timeout) == (128, 10)
    given = parse("cache", "serve", "--max-connections", "8", "--header-timeout", "3")
    assert (given.max_connections, given.header_timeout) == (8, 3)
