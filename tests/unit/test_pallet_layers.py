"""Layered pallets: a pallet's own copy of a file of an imported package wins, at every level.

Forklift v0.8.0 merges a pallet with its required pallets into one filesystem
(``internal/app/forklift/pallets-merging.go``: ``MergeFSPallet``, lines 23-76, which merges
each required pallet first, recursively; ``mergePalletImports``, lines 186-242, which follows an
imported file to the pallet that really has it; ``MergeFS.Open``, lines 424-462, which tries the
pallet's own files (the overlay) first and the imported ones only for a missing file;
``MergeFS.Sub``, lines 465-486, which makes a package's filesystem a sub-tree of that merged
view, whose ``Path`` is inside the pallet's own directory). A package named ``/packages/...`` is
loaded from that merged pallet (``internal/app/forklift/pallets.go``: ``LoadPkgReq``,
``LoadFSPkg``; ``internal/app/forklift/cli/requirements-repositories.go``: the pallet is its own
repository). Its compose files are opened through that filesystem and compose-go is handed its
``Path`` as the working dir (``internal/clients/docker/compose-loading.go``:
``LoadAppDefinition``, lines 21-56), so ``include:`` and ``extends: file:`` are read from disk
relative to the pallet's own directory.

The fixtures follow the layering of Forklift's example pallets: ``top`` requires ``middle``,
which requires ``base``; each imports all deployments and packages of the one below and keeps its
own copy of some files. Every expected list is worked out by hand in the comments.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements import list_pallet_images
from tests.treebuilder import PALLET_FILE, write_tree

BASE = "github.com/example/base"
MIDDLE = "github.com/example/middle"
LOCK = "type: version\ntag: {tag}\ncommit: 0123456789abcdef\ntimestamp: '20250101000000'\n"
IMPORT_ALL = "modifiers:\n  - target: /deployments\n  - target: /packages\n"

WEB_PACKAGE = """
    deployment:
      compose-files: [compose.yml]
    features:
      tls:
        compose-files: [compose-tls.yml]
"""


def _service(name: str, image: str) -> str:
    return f"services:\n  {name}:\n    image: {image}\n"


def _base(workspace: Path) -> Path:
    """base@v1.0.0: packages web (feature tls) and db, and a deployment of each."""
    return write_tree(
        workspace / f".cache/forklift/pallets/{BASE}@v1.0.0",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="base"),
            "deployments/web.deploy.yml": "package: /packages/web\nfeatures: [tls]\n",
            "deployments/db.deploy.yml": "package: /packages/db\n",
            "packages/web/forklift-package.yml": WEB_PACKAGE,
            "packages/web/compose.yml": _service("web", "base/web:1"),
            "packages/web/compose-tls.yml": _service("tls", "base/tls:1"),
            "packages/db/forklift-package.yml": "deployment:\n  compose-files: [compose.yml]\n",
            "packages/db/compose.yml": _service("db", "base/db:1"),
        },
    )


def _middle(workspace: Path, extra: dict[str, str] | None = None) -> Path:
    """middle@v2.0.0 imports everything of base and keeps its own compose-tls.yml of web, plus
    its own package cache and its deployment."""
    return write_tree(
        workspace / f".cache/forklift/pallets/{MIDDLE}@v2.0.0",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="middle"),
            f"requirements/pallets/{BASE}/forklift-version-lock.yml": LOCK.format(tag="v1.0.0"),
            f"requirements/pallets/{BASE}/all.imports.yml": IMPORT_ALL,
            "packages/web/compose-tls.yml": _service("tls", "middle/tls:2"),
            "deployments/cache.deploy.yml": "package: /packages/cache\n",
            "packages/cache/forklift-package.yml": "deployment:\n  compose-files: [compose.yml]\n",
            "packages/cache/compose.yml": _service("cache", "middle/cache:2"),
            **(extra or {}),
        },
    )


def _top(root: Path, extra: dict[str, str]) -> Path:
    """top requires middle@v2.0.0 and imports everything of it (so base's files too)."""
    return write_tree(
        root,
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="top"),
            f"requirements/pallets/{MIDDLE}/forklift-version-lock.yml": LOCK.format(tag="v2.0.0"),
            f"requirements/pallets/{MIDDLE}/all.imports.yml": IMPORT_ALL,
            **extra,
        },
    )


def _images(pallet: Path, workspace: Path) -> list[str]:
    found = list_pallet_images(pallet, workspace, include_disabled=False, with_file_exports=False)
    return [image.written for image in found]


def test_own_files_override_imported_package_files_at_two_levels(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base(workspace)
    _middle(workspace)
    pallet = _top(
        tmp_path / "top",
        {
            # top's own compose.yml of web (base has one too).
            "packages/web/compose.yml": _service("web", "top/web:3"),
            # top's own forklift-package.yml of db names a second compose file that only top has.
            "packages/db/forklift-package.yml": (
                "deployment:\n  compose-files: [compose.yml, compose-extra.yml]\n"
            ),
            "packages/db/compose-extra.yml": _service("extra", "top/extra:3"),
        },
    )
    # web: forklift-package.yml is base's (through middle), compose.yml is top's own (top/web:3),
    #   feature tls's compose-tls.yml is middle's own, which overrides base's (middle/tls:2).
    # db: forklift-package.yml is top's own; compose.yml is base's (base/db:1) and
    #   compose-extra.yml top's own (top/extra:3).
    # cache: middle's package, untouched (middle/cache:2).
    assert _images(pallet, workspace) == [
        "base/db:1",
        "middle/cache:2",
        "middle/tls:2",
        "top/extra:3",
        "top/web:3",
    ]


def test_without_overrides_the_imported_files_are_read(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base(workspace)
    _middle(workspace)
    pallet = _top(tmp_path / "top", {})
    # Only middle's compose-tls.yml overrides base's.
    assert _images(pallet, workspace) == [
        "base/db:1",
        "base/web:1",
        "middle/cache:2",
        "middle/tls:2",
    ]


def test_a_required_pallet_overriding_the_package_file_of_its_own_requirement(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "ws"
    _base(workspace)
    # middle's own forklift-package.yml of web drops the tls feature's file and names another
    # compose file for it, which middle has; top deploys web with tls as base's deployment says.
    _middle(
        workspace,
        {
            "packages/web/forklift-package.yml": """
                deployment:
                  compose-files: [compose.yml]
                features:
                  tls:
                    compose-files: [compose-proxy.yml]
            """,
            "packages/web/compose-proxy.yml": _service("proxy", "middle/proxy:2"),
        },
    )
    pallet = _top(tmp_path / "top", {})
    # web: middle's package file; compose.yml is base's, compose-proxy.yml middle's.
    assert _images(pallet, workspace) == [
        "base/db:1",
        "base/web:1",
        "middle/cache:2",
        "middle/proxy:2",
    ]


def test_include_is_read_relative_to_the_pallets_own_package_directory(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base(workspace)
    _middle(workspace)
    pallet = _top(
        tmp_path / "top",
        {
            # compose-go reads included files from disk relative to the working dir Forklift
            # hands it: <top>/packages/web, even though web's package file comes from base.
            "packages/web/compose.yml": "include: [../../shared/sidecar.yml]\n"
            + _service("web", "top/web:3"),
            "shared/sidecar.yml": _service("sidecar", "top/sidecar:3"),
        },
    )
    assert _images(pallet, workspace) == [
        "base/db:1",
        "middle/cache:2",
        "middle/tls:2",
        "top/sidecar:3",
        "top/web:3",
    ]


def test_include_of_a_file_only_an_imported_pallet_has_is_not_found(tmp_path: Path) -> None:
    """compose-go reads an include from disk, not through the merged pallet: a file that only
    base has is missing in top's directory, as it is for Forklift."""
    workspace = tmp_path / "ws"
    _base(workspace)
    _middle(workspace)
    (workspace / f".cache/forklift/pallets/{BASE}@v1.0.0/packages/web/sidecar.yml").write_text(
        _service("sidecar", "base/sidecar:1")
    )
    pallet = _top(
        tmp_path / "top",
        {"packages/web/compose.yml": "include: [sidecar.yml]\n" + _service("web", "top/web:3")},
    )
    with pytest.raises(RequirementsError) as caught:
        _images(pallet, workspace)
    assert str(pallet / "packages/web/sidecar.yml") in str(caught.value)


def test_extends_file_from_the_pallets_own_package_directory(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base(workspace)
    _middle(workspace)
    pallet = _top(
        tmp_path / "top",
        {
            "packages/db/compose.yml": """
                services:
                  db:
                    extends:
                      file: ../../common/db.yml
                      service: tuned
            """,
            "common/db.yml": _service("tuned", "top/db-tuned:3"),
        },
    )
    # db's compose.yml is top's own; its `extends` file is read from <top>/common.
    assert _images(pallet, workspace) == [
        "base/web:1",
        "middle/cache:2",
        "middle/tls:2",
        "top/db-tuned:3",
    ]


def test_a_compose_file_listed_twice_is_loaded_twice_in_order(tmp_path: Path) -> None:
    """Forklift passes every listed file to compose-go in order, repeats included
    (``internal/app/forklift/pallets-deployments.go``, lines 125-133: the deployment's files,
    then each enabled feature's, features sorted by name)."""
    workspace = tmp_path / "ws"
    _base(workspace)
    _middle(workspace)
    pallet = _top(
        tmp_path / "top",
        {
            "deployments/web.deploy.yml": "package: /packages/web\nfeatures: [undo, tls]\n",
            "packages/web/forklift-package.yml": """
                deployment:
                  compose-files: [compose.yml]
                features:
                  tls:
                    compose-files: [compose-tls.yml]
                  undo:
                    compose-files: [compose.yml]
            """,
            "packages/web/compose-tls.yml": _service("web", "top/web-tls:3"),
        },
    )
    # web loads compose.yml (base's: base/web:1), compose-tls.yml (top's own, which sets web's
    # image to top/web-tls:3), then compose.yml again (feature undo sorts after tls), so web's
    # image is base/web:1 again.
    assert _images(pallet, workspace) == ["base/db:1", "base/web:1", "middle/cache:2"]
