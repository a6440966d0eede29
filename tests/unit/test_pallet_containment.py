"""Files a pallet leads forklift-boot to read stay inside the pallet and the trees it requires.

A deliberate deviation from Forklift v0.8.0, which hands compose-go the package's directory
(``internal/clients/docker/compose-loading.go``) and lets it read ``include:``,
``extends: file:`` and an include's ``env_file:`` from anywhere on disk, and which joins a
``package:`` path with ``..`` onto the pallet's or repository's directory
(``internal/app/forklift/pallets.go``: ``LoadPkgReq``; ``internal/app/forklift/fs.go``:
``dirFS.Sub``). forklift-boot refuses each with one line that names the file and where it was
named, never the file's content. Each hostile file is built here next to a secret that must
not show up in any output.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot import cli
from forklift_boot.errors import RequirementsError
from forklift_boot.requirements import list_bundle_images, list_pallet_images
from tests.treebuilder import PALLET_FILE, package, under, write_tree

Capture = pytest.CaptureFixture[str]
SECRET = "s3cret-Value-42"
REPO = "github.com/acme/repo"
LOCK = "type: version\ntag: v1.0.0\ncommit: 0123456789abcdef\ntimestamp: '20250101000000'\n"


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """cli.main installs a SIGTERM handler; put pytest's back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


@pytest.fixture
def secrets(tmp_path: Path) -> Path:
    """A directory outside every pallet, with a compose file, an env file and a plain secret."""
    return write_tree(
        tmp_path / "secrets",
        {
            "compose.yml": f"services:\n  leak:\n    image: leak:{SECRET}\n",
            "env": f"TAG={SECRET}\n",
            ".env": f"TAG={SECRET}\n",
            "token": f"{SECRET}\n",
        },
    )


def _pallet(root: Path, compose: str, extra: dict[str, str] | None = None) -> Path:
    """A pallet deploying its own package web, whose compose.yml is ``compose``."""
    return write_tree(
        root,
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/web.deploy.yml": "package: /packages/web\n",
            "packages/web/forklift-package.yml": "deployment:\n  compose-files: [compose.yml]\n",
            "packages/web/compose.yml": compose,
            **(extra or {}),
        },
    )


def _images(pallet: Path, workspace: Path) -> list[str]:
    found = list_pallet_images(pallet, workspace, include_disabled=False, with_file_exports=False)
    return [image.written for image in found]


def _refused(pallet: Path, workspace: Path) -> str:
    with pytest.raises(RequirementsError) as caught:
        _images(pallet, workspace)
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


def test_include_outside_the_pallet_is_refused(tmp_path: Path, secrets: Path) -> None:
    compose = f"include: [{secrets / 'compose.yml'}]\nservices:\n  web:\n    image: web:1\n"
    pallet = _pallet(tmp_path / "p", compose)
    message = _refused(pallet, tmp_path)
    assert str(secrets / "compose.yml") in message
    assert message == (
        f"couldn't load compose file {pallet / 'packages/web/compose.yml'}: "
        f"{secrets / 'compose.yml'} (an `include` path) is outside the pallet and the "
        "repositories and pallets it requires; forklift-boot reads no file outside them: "
        "move the file into the pallet"
    )


def test_include_climbing_out_with_dots_is_refused(tmp_path: Path, secrets: Path) -> None:
    # <p>/packages/web/../../../secrets/compose.yml is <tmp>/secrets/compose.yml.
    compose = "include: [../../../secrets/compose.yml]\nservices:\n  web:\n    image: web:1\n"
    pallet = _pallet(tmp_path / "p", compose)
    assert str(secrets / "compose.yml") in _refused(pallet, tmp_path)


def test_include_env_file_outside_the_pallet_is_refused(tmp_path: Path, secrets: Path) -> None:
    compose = f"""
        include:
          - path: extra.yml
            env_file: {secrets / "env"}
        services:
          web:
            image: web:1
    """
    pallet = _pallet(
        tmp_path / "p",
        compose,
        {"packages/web/extra.yml": "services:\n  extra:\n    image: extra:${TAG}\n"},
    )
    message = _refused(pallet, tmp_path)
    assert str(secrets / "env") in message
    assert "(an `include` env_file)" in message


def test_default_env_file_of_an_include_outside_the_pallet_is_refused(
    tmp_path: Path, secrets: Path
) -> None:
    # With no env_file, compose-go reads the .env of the include's project directory.
    compose = f"""
        include:
          - path: extra.yml
            project_directory: {secrets}
        services:
          web:
            image: web:1
    """
    pallet = _pallet(
        tmp_path / "p",
        compose,
        {"packages/web/extra.yml": "services:\n  extra:\n    image: extra:${TAG}\n"},
    )
    assert str(secrets / ".env") in _refused(pallet, tmp_path)


def test_extends_file_outside_the_pallet_is_refused(tmp_path: Path, secrets: Path) -> None:
    compose = f"""
        services:
          web:
            extends:
              file: {secrets / "compose.yml"}
              service: leak
    """
    pallet = _pallet(tmp_path / "p", compose)
    message = _refused(pallet, tmp_path)
    assert str(secrets / "compose.yml") in message
    assert "(the `extends` file of service web)" in message


def test_a_compose_file_symlinked_out_of_the_pallet_is_refused(
    tmp_path: Path, secrets: Path
) -> None:
    pallet = _pallet(tmp_path / "p", "")
    compose = pallet / "packages/web/compose.yml"
    compose.unlink()
    compose.symlink_to(secrets / "compose.yml")
    message = _refused(pallet, tmp_path)
    assert str(compose) in message


def test_a_deployment_symlinked_out_of_the_pallet_is_refused(tmp_path: Path, secrets: Path) -> None:
    # A valid deployment of the pallet's own package, but kept outside the pallet.
    (secrets / "leak.deploy.yml").write_text("package: /packages/web\n")
    pallet = _pallet(tmp_path / "p", "services:\n  web:\n    image: web:1\n")
    (pallet / "deployments/leak.deploy.yml").symlink_to(secrets / "leak.deploy.yml")
    assert str(pallet / "deployments/leak.deploy.yml") in _refused(pallet, tmp_path)


def test_an_include_symlinked_to_a_file_of_a_required_pallet_is_allowed(tmp_path: Path) -> None:
    """Symlinks are resolved first: one that stays inside the pallet's trees is followed."""
    workspace = tmp_path / "ws"
    base = write_tree(
        workspace / ".cache/forklift/pallets/github.com/example/base@v1.0.0",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="base"),
            "shared/sidecar.yml": "services:\n  sidecar:\n    image: sidecar:1\n",
        },
    )
    pallet = _pallet(
        tmp_path / "p",
        "include: [sidecar.yml]\nservices:\n  web:\n    image: web:1\n",
        {
            "requirements/pallets/github.com/example/base/forklift-version-lock.yml": LOCK,
            "requirements/pallets/github.com/example/base/shared.imports.yml": (
                "modifiers:\n  - target: /shared\n"
            ),
        },
    )
    (pallet / "packages/web/sidecar.yml").symlink_to(base / "shared/sidecar.yml")
    assert _images(pallet, workspace) == ["sidecar:1", "web:1"]


def test_a_pallet_directory_that_is_a_symlink_is_fine(tmp_path: Path) -> None:
    real = _pallet(
        tmp_path / "real",
        "include: [more.yml]\nservices:\n  web:\n    image: web:1\n",
        {"packages/web/more.yml": "services:\n  more:\n    image: more:1\n"},
    )
    link = tmp_path / "link"
    link.symlink_to(real)
    assert _images(link, tmp_path) == ["more:1", "web:1"]


@pytest.mark.parametrize(
    "package_path",
    ["/../secrets", "/packages/../../secrets", f"{REPO}/../../../../../../secrets"],
)
def test_a_package_path_with_dots_is_refused(
    tmp_path: Path, secrets: Path, package_path: str
) -> None:
    # A package directory made of the secrets, which a `..` path would reach.
    write_tree(secrets, package("leak:1"))
    workspace = tmp_path / "ws"
    write_tree(workspace / f".cache/forklift/repositories/{REPO}@v1.0.0", package("repo:1"))
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            f"requirements/repositories/{REPO}/forklift-version-lock.yml": LOCK,
            "deployments/leak.deploy.yml": f"package: {package_path}\n",
        },
    )
    message = _refused(pallet, workspace)
    assert f"couldn't load package {package_path}" in message
    assert "`..`" in message


def test_a_version_lock_leading_out_of_the_workspace_cache_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    write_tree(tmp_path / "x-0123456789ab", package("leak:1"))
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            # The pseudo-version v0.0.0-<timestamp>-<commit> pastes the timestamp in as written.
            f"requirements/repositories/{REPO}/forklift-version-lock.yml": (
                "type: pseudoversion\ntimestamp: /../../../../../../../x\n"
                "commit: 0123456789abcdef\n"
            ),
            "deployments/leak.deploy.yml": f"package: {REPO}\n",
        },
    )
    assert "fix its version lock" in _refused(pallet, workspace)


def test_a_repository_package_includes_inside_its_repository(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    write_tree(
        workspace / f".cache/forklift/repositories/{REPO}@v1.0.0",
        {
            **under("web", package("web:1")),
            "web/compose.yml": "include: [../common/db.yml]\nservices:\n  web:\n    image: web:1\n",
            "common/db.yml": "services:\n  db:\n    image: db:1\n",
        },
    )
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            f"requirements/repositories/{REPO}/forklift-version-lock.yml": LOCK,
            "deployments/web.deploy.yml": f"package: {REPO}/web\n",
        },
    )
    assert _images(pallet, workspace) == ["db:1", "web:1"]


def test_a_bundled_package_including_outside_the_bundle_is_refused(
    tmp_path: Path, secrets: Path
) -> None:
    bundle = write_tree(
        tmp_path / "stages/1",
        {
            "forklift-bundle.yml": "forklift-version: v0.7.0\ndeploys:\n  web:\n"
            "    package: /packages/web\n",
            "packages/packages/web/forklift-package.yml": (
                "deployment:\n  compose-files: [compose.yml]\n"
            ),
            "packages/packages/web/compose.yml": f"include: [{secrets / 'compose.yml'}]\n",
        },
    )
    with pytest.raises(RequirementsError) as caught:
        list_bundle_images(bundle, with_file_exports=False)
    assert str(secrets / "compose.yml") in str(caught.value)
    assert SECRET not in str(caught.value)


def test_ls_img_refuses_with_one_line_and_no_secret(
    capsys: Capture, tmp_path: Path, secrets: Path
) -> None:
    compose = f"""
        include:
          - path: extra.yml
            env_file: {secrets / "env"}
        services:
          web:
            image: web:1
    """
    pallet = _pallet(
        tmp_path / "p",
        compose,
        {"packages/web/extra.yml": "services:\n  extra:\n    image: extra:${TAG}\n"},
    )
    code = cli.main(["ls-img", "--pallet", str(pallet)], env={"HOME": str(tmp_path)})
    captured = capsys.readouterr()
    assert (code, captured.out) == (1, "")
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("Error: couldn't load compose file ")
    assert str(secrets / "env") in captured.err
    assert SECRET not in captured.err
    assert os.path.exists(secrets / "env")  # nothing touched
