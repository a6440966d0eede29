"""Every path option works relative to the current directory, and a named workspace must exist.

Forklift opens the workspace with ``os.DirFS`` on the path as given, so a relative
``--workspace`` works there (``internal/app/forklift/workspace.go``: ``LoadWorkspace``), and a
workspace that does not exist is an error: "couldn't find workspace at ...". Each test changes
into a temporary directory and passes relative paths through ``cli.main``.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot import cli
from forklift_boot.cache import ImageCache
from tests.treebuilder import PALLET_FILE, package, under, write_tree
from tests.unit.test_bundles_and_stages import STORE, _stage_store
from tests.unit.test_transfer import write_image

Capture = pytest.CaptureFixture[str]
REPO = "github.com/example/device-pkgs"
LOCK = "type: version\ntag: v1.0.0\ncommit: 0123456789abcdef\ntimestamp: '20250101000000'\n"


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """cli.main installs a SIGTERM handler; put pytest's back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def run(capsys: Capture, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    code = cli.main(list(argv), env={"HOME": "/nonexistent", **(env or {})})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _workspace_and_pallet(root: Path) -> None:
    """ws/ caches repository REPO@v1.0.0 with package web; p/ is a pallet deploying it and one
    local package."""
    write_tree(
        root / f"ws/.cache/forklift/repositories/{REPO}@v1.0.0",
        {
            "forklift-repository.yml": f"repository:\n  path: {REPO}\n",
            **under("web", package("web:1", {"tls": "tls:1"})),
        },
    )
    write_tree(
        root / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            f"requirements/repositories/{REPO}/forklift-version-lock.yml": LOCK,
            "deployments/web.deploy.yml": f"package: {REPO}/web\nfeatures: [tls]\n",
            "deployments/own.deploy.yml": "package: /packages/own\n",
            **under("packages/own", package("own:1")),
        },
    )


EXPECTED = ["own:1", "tls:1", "web:1"]  # web's compose.yml and its tls feature, and own's


def test_relative_workspace_flag_and_pallet(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workspace_and_pallet(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "--workspace", "ws", "ls-img", "--pallet", "p")
    assert (code, err) == (0, "")
    assert out.splitlines() == EXPECTED


def test_relative_workspace_from_the_environment(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workspace_and_pallet(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "ls-img", "--pallet", "p", env={"FORKLIFT_WORKSPACE": "ws"})
    assert (code, err) == (0, "")
    assert out.splitlines() == EXPECTED


def test_workspace_dot_and_pallet_above(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _workspace_and_pallet(tmp_path)
    monkeypatch.chdir(tmp_path / "ws")
    code, out, err = run(capsys, "--ws", ".", "ls-img", "--pallet", "../p")
    assert (code, err) == (0, "")
    assert out.splitlines() == EXPECTED


def test_relative_bundle_evaluated_from_its_packages(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A v0.7.0 bundle records no images: its bundled package is evaluated, compose files and all.
    write_tree(
        tmp_path / "stages/1",
        {
            "forklift-bundle.yml": """
                forklift-version: v0.7.0
                deploys:
                  web:
                    package: github.com/example/device-pkgs/web
                    features: [tls]
            """,
            **under(f"packages/{REPO}/web", package("web:1", {"tls": "tls:1"})),
        },
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "ls-img", "--bundle", "stages/1")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["tls:1", "web:1"]


def test_relative_stage_store(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stage_store(tmp_path / "stages", STORE)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "--stage-store", "stages", "ls-img", "--bundles", "next")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["b5:1", "common:1"]  # bundle 5 is next


def test_relative_images_file(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "list.txt").write_text("# wanted\nnginx:1.27\nalpine:3.20\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "ls-img", "--images-file", "list.txt")
    assert (code, err) == (0, "")
    assert out.splitlines() == ["alpine:3.20", "nginx:1.27"]


def test_relative_cache_dir(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ImageCache(tmp_path / "cache").writing() as writer:
        write_image(writer, "docker.io/library/alpine:3.20", [b"a layer\n"], ["alpine:3.20"])
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "cache", "ls-img", "--cache-dir", "cache", "--json")
    assert (code, err) == (0, "")
    names = [row["name"] for row in json.loads(out)["images"]]
    assert names == ["docker.io/library/alpine:3.20"]
    code, out, err = run(capsys, "cache", "verify", "--cache-dir", "cache")
    assert (code, out) == (0, ""), err


# A workspace that was named must exist


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--workspace", "missing"], {}),
        ([], {"FORKLIFT_WORKSPACE": "missing"}),
    ],
)
def test_a_named_workspace_that_does_not_exist_fails(
    capsys: Capture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
) -> None:
    _workspace_and_pallet(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv, "ls-img", "--pallet", "p", env=env)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "couldn't find workspace at missing" in err


def test_a_named_workspace_that_does_not_exist_fails_even_for_a_local_pallet(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Forklift loads the workspace for every pallet command, before it looks at requirements.
    write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/own.deploy.yml": "package: /packages/own\n",
            **under("packages/own", package("own:1")),
        },
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "--ws", "missing", "ls-img", "--pallet", "p")
    assert (code, out) == (1, "")
    assert err == (
        "Error: couldn't find workspace at missing; pass an existing directory to --workspace "
        "(or FORKLIFT_WORKSPACE)\n"
    )


def test_a_default_workspace_that_does_not_exist_is_not_needed_by_a_local_pallet(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # $HOME is /nonexistent: a pallet whose packages are all its own needs no workspace.
    write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/own.deploy.yml": "package: /packages/own\n",
            **under("packages/own", package("own:1")),
        },
    )
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "ls-img", "--pallet", "p")
    assert (code, out, err) == (0, "own:1\n", "")


def test_a_stage_store_run_needs_no_workspace(
    capsys: Capture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stage_store(tmp_path / "stages", STORE)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(
        capsys, "--workspace", "missing", "--stage-store", "stages", "ls-img", "--bundles", "next"
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == ["b5:1", "common:1"]
