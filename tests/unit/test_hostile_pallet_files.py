"""Hostile pallet files: alias bombs, deep nesting, FIFOs, devices, symlink loops and secrets.

Each case runs ls-img in a child process under a 1 GiB address-space limit and a timeout: these are
hang and memory guards (the refusals take well under a second), not benchmarks.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.files import (
    MAX_FILE_BYTES,
    MAX_YAML_DEPTH,
    UnreadableFile,
    load_yaml_mapping,
    read_regular_file,
)
from tests.treebuilder import PALLET_FILE, write_tree

REPO = Path(__file__).resolve().parents[2]
SECRET = "hunter2-SECRET"

_CHILD = """\
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from forklift_boot import cli
sys.exit(cli.main(sys.argv[1:], env={"HOME": "/nonexistent"}))
"""

# 10 levels of 9 aliases (the 616-byte file of issue 14 had the same shape).
BOMB = "\n".join(
    [
        "x-a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
        *(
            f"x-{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]"
            for p, c in zip("abcdefghi", "bcdefghij", strict=True)
        ),
    ]
)


def ls_img(pallet: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHILD, "ls-img", "--pallet", str(pallet), "--ws", str(pallet)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def pallet_with(root: Path, compose: str, deployment: str = "package: /packages/web\n") -> Path:
    return write_tree(
        root / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/web.deploy.yml": deployment,
            "packages/web/forklift-package.yml": "deployment:\n  compose-files: [compose.yml]\n",
            "packages/web/compose.yml": compose,
        },
    )


def assert_one_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"Error: {expected}\n"
    assert SECRET not in result.stderr


# --- Aliases and nesting -----------------------------------------------------------------------


def test_compose_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    pallet = pallet_with(tmp_path, BOMB + "\nservices:\n  web:\n    image: nginx\n")
    # go-yaml's count, by hand: x-a's list is 10 nodes, x-b's 1 + 9 * (1 + 10) = 100, x-c's
    # 1 + 9 * 101 = 910. Through x-c (12 + 102 + 910 decodes) 990 of 1024 came through aliases;
    # each alias in x-d adds 911 decodes, 910 aliased: after the 4th, 4630 / 4670 > 99%.
    compose = pallet / "packages/web/compose.yml"
    assert_one_error(
        ls_img(pallet),
        f"couldn't load compose file {compose}: document contains excessive aliasing "
        "at line 4, column 19",
    )


def test_alias_bomb_in_a_deployment_file(tmp_path: Path) -> None:
    # The same count, with the 2 decodes of `package: ...` before it: the 4th alias still fails.
    deployment = "package: /packages/web\n" + BOMB + "\n"
    pallet = pallet_with(tmp_path, "services:\n  web:\n    image: nginx\n", deployment)
    assert_one_error(
        ls_img(pallet),
        f"couldn't parse deployment file {pallet}/deployments/web.deploy.yml: "
        "document contains excessive aliasing at line 5, column 19",
    )


def _aliases_of_100_nodes(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "aliases.yml"
    lines = ["a: &a [" + ", ".join(["x"] * 99) + "]", "b:", *["- *a"] * count]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_aliasing_within_go_yamls_ratio_is_accepted(tmp_path: Path) -> None:
    # 3000 aliases of a 100-node list: 300,000 of 303,104 decodes come through aliases (98.98%),
    # under the 99% allowed up to 400,000 decodes.
    data = load_yaml_mapping(_aliases_of_100_nodes(tmp_path, 3000), "test file")
    assert len(data["b"]) == 3000


def test_aliasing_over_go_yamls_ratio_fails_where_go_yaml_would(tmp_path: Path) -> None:
    # Past 400,000 decodes the allowed share falls towards 10%: the 3966th alias is the first
    # that go-yaml refuses (worked out by stepping go-yaml's decoder one decode at a time).
    path = _aliases_of_100_nodes(tmp_path, 5000)
    with pytest.raises(RequirementsError) as caught:
        load_yaml_mapping(path, "test file")
    assert str(caught.value) == (
        f"couldn't parse test file {path}: document contains excessive aliasing "
        "at line 3968, column 3"
    )


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yml"
    path.write_text("a: &a [x, *a]\n", encoding="utf-8")
    with pytest.raises(RequirementsError) as caught:
        load_yaml_mapping(path, "test file")
    assert (
        str(caught.value)
        == f"couldn't parse test file {path}: recursive YAML alias at line 1, column 11"
    )


def _nested(levels: int) -> str:
    """A mapping whose values nest ``levels`` deep in all (the top-level mapping is one)."""
    return "a: " + "[" * (levels - 1) + "x" + "]" * (levels - 1) + "\n"


def test_nesting_up_to_the_limit_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    path.write_text(_nested(MAX_YAML_DEPTH), encoding="utf-8")
    value = load_yaml_mapping(path, "test file")["a"]
    for _ in range(MAX_YAML_DEPTH - 1):
        value = value[0]
    assert value == "x"


def test_nesting_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    path.write_text(_nested(MAX_YAML_DEPTH + 1), encoding="utf-8")
    with pytest.raises(RequirementsError) as caught:
        load_yaml_mapping(path, "test file")
    # The 101st level opens at the 100th `[` (column 4 + 99).
    assert str(caught.value) == (
        f"couldn't parse test file {path}: nesting exceeds the limit of 100 levels "
        "at line 1, column 103"
    )


def test_nesting_counts_what_aliases_expand_to(tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    inner = "[" * 60 + "x" + "]" * 60  # 60 levels, under a 1-level mapping: 61
    path.write_text(
        f"a: &a {inner}\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n"
    )
    # b: 1 + 40 + 60 = 101 levels once *a is expanded.
    with pytest.raises(RequirementsError) as caught:
        load_yaml_mapping(path, "test file")
    assert str(caught.value) == (
        f"couldn't parse test file {path}: nesting exceeds the limit of 100 levels "
        "at line 2, column 44"
    )


def test_very_deep_nesting_is_one_line(tmp_path: Path) -> None:
    # 100,000 levels: Debian bookworm's libyaml composer crashed on this (SIGSEGV).
    deployment = "package: /packages/web\nx: " + "[" * 100_000 + "]" * 100_000 + "\n"
    pallet = pallet_with(tmp_path, "services:\n  web:\n    image: nginx\n", deployment)
    result = ls_img(pallet)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(
        f"Error: couldn't parse deployment file {pallet}/deployments/web.deploy.yml: "
    )
    assert "nesting" in result.stderr
    assert len(result.stderr.splitlines()) == 1


# --- Files that are not regular files ----------------------------------------------------------


def test_deployment_that_is_a_fifo(tmp_path: Path) -> None:
    pallet = pallet_with(tmp_path, "services:\n  web:\n    image: nginx\n")
    deployment = pallet / "deployments/web.deploy.yml"
    deployment.unlink()
    os.mkfifo(deployment)
    assert_one_error(
        ls_img(pallet),
        f"couldn't read deployment file {deployment}: it is a FIFO (named pipe), "
        "not a regular file",
    )


def test_deployment_symlinked_to_itself(tmp_path: Path) -> None:
    pallet = pallet_with(tmp_path, "services:\n  web:\n    image: nginx\n")
    deployment = pallet / "deployments/web.deploy.yml"
    deployment.unlink()
    deployment.symlink_to(deployment.name)
    assert_one_error(
        ls_img(pallet),
        f"couldn't read deployment file {deployment}: it is a symlink loop "
        "(too many levels of symbolic links)",
    )


def test_include_of_a_fifo(tmp_path: Path) -> None:
    pallet = pallet_with(tmp_path, "include: [fifo.yml]\nservices:\n  web:\n    image: nginx\n")
    fifo = pallet / "packages/web/fifo.yml"
    os.mkfifo(fifo)
    assert_one_error(
        ls_img(pallet),
        f"couldn't load compose file {fifo}: it is a FIFO (named pipe), not a regular file",
    )


def test_include_of_dev_zero(tmp_path: Path) -> None:
    pallet = pallet_with(tmp_path, "include: [zero.yml]\nservices:\n  web:\n    image: nginx\n")
    zero = pallet / "packages/web/zero.yml"
    # /dev/zero's own device node, inside the pallet: a link to /dev/zero is refused earlier, as
    # a file outside the pallet (test_pallet_containment.py).
    os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(1, 5))
    assert_one_error(
        ls_img(pallet), f"couldn't load compose file {zero}: it is a device, not a regular file"
    )


def test_compose_file_over_the_size_limit(tmp_path: Path) -> None:
    pallet = pallet_with(tmp_path, "")
    compose = pallet / "packages/web/compose.yml"
    with compose.open("wb") as file:  # sparse: no disk space used
        file.truncate(MAX_FILE_BYTES + 1)
    assert_one_error(
        ls_img(pallet),
        f"couldn't load compose file {compose}: it is larger than 4 MiB, the limit for such files",
    )


def test_env_file_that_is_a_fifo(tmp_path: Path) -> None:
    compose = (
        "include:\n  - path: db.yml\n    env_file: fifo.env\nservices:\n  web:\n    image: nginx\n"
    )
    pallet = pallet_with(tmp_path, compose)
    (pallet / "packages/web/db.yml").write_text("services:\n  db:\n    image: postgres\n")
    os.mkfifo(pallet / "packages/web/fifo.env")
    assert_one_error(
        ls_img(pallet),
        f"couldn't load compose file {pallet}/packages/web/compose.yml: failed to read "
        f"{pallet}/packages/web/fifo.env: it is a FIFO (named pipe), not a regular file",
    )


# --- Secrets never reach the output ------------------------------------------------------------


def _pallet_reading_secret(tmp_path: Path, secret: str) -> tuple[Path, Path]:
    """A pallet whose include names an env file holding a secret (one outside the pallet is
    refused before it is read: test_pallet_containment.py)."""
    compose = (
        "include:\n  - path: db.yml\n    env_file: secret.env\n"
        "services:\n  web:\n    image: nginx\n"
    )
    pallet = pallet_with(tmp_path, compose)
    secret_file = pallet / "packages/web/secret.env"
    secret_file.write_text(secret, encoding="utf-8")
    (pallet / "packages/web/db.yml").write_text("services:\n  db:\n    image: postgres\n")
    return pallet, secret_file


def test_env_file_parse_error_does_not_echo_the_line(tmp_path: Path) -> None:
    pallet, secret_file = _pallet_reading_secret(tmp_path, f"TOKEN={SECRET}\n{SECRET}/x=1\n")
    result = ls_img(pallet)
    assert_one_error(
        result,
        f"couldn't load compose file {pallet}/packages/web/compose.yml: failed to read "
        f"{secret_file}: line 2: unexpected character in variable name",
    )


def test_env_file_unterminated_quote_does_not_echo_the_value(tmp_path: Path) -> None:
    pallet, secret_file = _pallet_reading_secret(tmp_path, f"TOKEN='{SECRET}\n")
    assert_one_error(
        ls_img(pallet),
        f"couldn't load compose file {pallet}/packages/web/compose.yml: failed to read "
        f"{secret_file}: line 1: unterminated quoted value",
    )


def test_dollar_in_an_env_value_warns_without_quoting_it(tmp_path: Path) -> None:
    pallet, secret_file = _pallet_reading_secret(tmp_path, "PASSWORD=pa$sw0rdSECRET\n")
    result = ls_img(pallet)
    assert (result.returncode, result.stdout) == (0, "nginx\npostgres\n")
    assert result.stderr == (
        f"Warning: A variable in PASSWORD of env file {secret_file} is not set. "
        "Defaulting to a blank string.\n"
    )


def test_bad_explicit_tag_does_not_echo_the_value(tmp_path: Path) -> None:
    pallet = pallet_with(tmp_path, f"services:\n  web:\n    image: !!int {SECRET}\n")
    assert_one_error(
        ls_img(pallet),
        f"couldn't load compose file {pallet}/packages/web/compose.yml: "
        "invalid value for its explicit tag",
    )
    deployment = f"package: !!float {SECRET}\n"
    pallet = pallet_with(tmp_path / "2", "services:\n  web:\n    image: nginx\n", deployment)
    assert_one_error(
        ls_img(pallet),
        f"couldn't parse deployment file {pallet}/deployments/web.deploy.yml: "
        "invalid value for its explicit tag",
    )


def test_interpolation_errors_name_the_key_not_the_value(tmp_path: Path) -> None:
    compose = f"services:\n  web:\n    image: nginx\n    environment:\n      A: ${{{SECRET}\n"
    pallet = pallet_with(tmp_path, compose)
    assert_one_error(
        ls_img(pallet),
        f"couldn't load compose file {pallet}/packages/web/compose.yml: invalid interpolation "
        "format for services.web.environment.A (you may need to escape any $ with another $)",
    )


# --- read_regular_file -------------------------------------------------------------------------


def test_read_regular_file_reads_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_regular_file(path, limit=10) == b"x" * 10
    with pytest.raises(UnreadableFile, match="^it is larger than 9 bytes, the limit"):
        read_regular_file(path, limit=9)


def test_read_regular_file_does_not_trust_the_size_stat_gives() -> None:
    # procfs files say they are empty; the read itself is bounded.
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(UnreadableFile, match="^it is larger than 10 bytes"):
        read_regular_file(Path("/proc/self/maps"), limit=10)


def test_read_regular_file_refusals(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("dir")
    (tmp_path / "file").write_text("x")
    (tmp_path / "file-link").symlink_to("file")
    with pytest.raises(UnreadableFile) as missing:
        read_regular_file(tmp_path / "gone")
    assert (str(missing.value), missing.value.missing) == ("no such file or directory", True)
    with pytest.raises(UnreadableFile, match="^it is a directory$"):
        read_regular_file(tmp_path / "link")
    with pytest.raises(UnreadableFile, match="^it is a device, not a regular file$"):
        read_regular_file(Path("/dev/null"))
    assert read_regular_file(tmp_path / "file-link") == b"x"
    with pytest.raises(UnreadableFile, match="^it is a symlink, not a regular file$"):
        read_regular_file(tmp_path / "file-link", follow_symlinks=False)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableFile, match=r"^it is a FIFO \(named pipe\), not a regular file$"):
        read_regular_file(fifo)
