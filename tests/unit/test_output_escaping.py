"""Every way out escapes control characters: a name from a foreign cache can't forge lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from forklift_boot import cli
from forklift_boot.cache import ImageCache
from forklift_boot.cli.output import configure_logging
from forklift_boot.errors import printable
from tests.unit.test_cache_verify import store_image

FORGED = "docker.io/evil/app:1\x1b[31m\nError: FAKE\x1b[0m"


def test_printable_escapes_what_a_terminal_would_act_on() -> None:
    assert printable("nginx:1.27") == "nginx:1.27"
    assert printable("a\x1b[31mb\nc\rd\u2028e") == "a\\x1b[31mb\\nc\\rd\\u2028e"
    assert printable("café ✓") == "café ✓"  # printable text stays as it is


def test_cache_ls_img_of_a_forged_name_prints_one_escaped_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache_dir = tmp_path / "stick"
    with ImageCache(cache_dir).writing() as writer:
        store_image(writer, "docker.io/library/nginx:1.27", [b"layer"])
    # A stick's index.json, as anybody may write it: the name and the refs carry escapes.
    index_path = cache_dir / "index.json"
    index = json.loads(index_path.read_text())
    for entry in index["manifests"]:
        for key in entry["annotations"]:
            if "name" in key or "refs" in key:
                entry["annotations"][key] = FORGED
    index_path.write_text(json.dumps(index))
    code = cli.main(["--cache-dir", str(cache_dir), "cache", "ls-img"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "\x1b" not in out + err
    assert not any(line.startswith("Error: FAKE") for line in (out + err).splitlines())
    assert out.count("\n") == 1  # one image, one line
    assert "\\x1b[31m\\nError: FAKE" in out


def test_log_lines_are_escaped_on_a_terminal_and_in_the_journal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger("forklift_boot")
    for journal, prefix in ((False, "Warning: "), (True, "<4>")):
        configure_logging(verbose=False, journal=journal)
        logger.warning("couldn't fetch %s", FORGED)
        err = capsys.readouterr().err
        assert (
            err == f"{prefix}couldn't fetch docker.io/evil/app:1\\x1b[31m\\nError: FAKE\\x1b[0m\n"
        )
