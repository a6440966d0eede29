"""Pallet evaluation: deployments, features, packages from repositories, and imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements import list_pallet_images
from tests.treebuilder import PALLET_FILE, package, under, write_tree

PSEUDO_LOCK = """
    type: pseudoversion
    timestamp: "20250101000000"
    commit: 0123456789abcdef0123456789abcdef01234567
"""
# Go's pseudo-version for a commit after release v1.4.0: v1.4.1-0.<timestamp>-<12 hex>.
PSEUDO_LOCK_AFTER_TAG = """
    type: pseudoversion
    tag: v1.4.0
    timestamp: "20250101000000"
    commit: 0123456789abcdef0123456789abcdef01234567
"""


def _images(pallet: Path, workspace: Path, *, include_disabled: bool = False) -> list[str]:
    found = list_pallet_images(
        pallet, workspace, include_disabled=include_disabled, with_file_exports=False
    )
    return [image.written for image in found]


def _deploy(package_path: str, features: str = "", disabled: bool = False) -> str:
    text = f"package: {package_path}\n"
    if features:
        text += f"features: [{features}]\n"
    if disabled:
        text += "disabled: true\n"
    return text


def test_local_packages_sorted_unique(tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/a.deploy.yml": _deploy("/packages/a"),
            "deployments/nested/b.deploy.yml": _deploy("/packages/b"),
            "deployments/c.deploy.yml": _deploy("/packages/a"),
            **under("packages/a", package("zzz/app:1")),
            **under("packages/b", package("aaa/app:2")),
        },
    )
    assert _images(pallet, tmp_path) == ["aaa/app:2", "zzz/app:1"]


def test_disabled_deployments_only_with_include_disabled(tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/on.deploy.yml": _deploy("/packages/on"),
            "deployments/off.deploy.yml": _deploy("/packages/off", disabled=True),
            **under("packages/on", package("on:1")),
            **under("packages/off", package("off:1")),
        },
    )
    assert _images(pallet, tmp_path) == ["on:1"]
    assert _images(pallet, tmp_path, include_disabled=True) == ["off:1", "on:1"]


def test_features_apply_in_alphabetical_order_so_the_last_override_wins(tmp_path: Path) -> None:
    # Both features override service `app`. Forklift appends enabled features' files sorted by
    # name, so compose-b.yml comes last and wins although the deployment lists b-feature first.
    files = {
        "forklift-package.yml": """
            deployment:
              compose-files: [compose.yml]
            features:
              b-feature: {compose-files: [compose-b.yml]}
              a-feature: {compose-files: [compose-a.yml]}
        """,
        "compose.yml": "services:\n  app:\n    image: base:1\n",
        "compose-a.yml": "services:\n  app:\n    image: from-a:1\n",
        "compose-b.yml": "services:\n  app:\n    image: from-b:1\n",
    }
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/app.deploy.yml": _deploy("/packages/app", "b-feature, a-feature"),
            **under("packages/app", files),
        },
    )
    assert _images(pallet, tmp_path) == ["from-b:1"]


def test_feature_not_enabled_does_not_override(tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/app.deploy.yml": _deploy("/packages/app", "extra"),
            **under(
                "packages/app",
                package("base:1", {"extra": "extra:1", "full": "full:1"}),
            ),
        },
    )
    assert _images(pallet, tmp_path) == ["base:1", "extra:1"]


def test_unknown_feature_is_an_error_naming_the_deployment(tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/apps/web.deploy.yml": _deploy("/packages/app", "nope"),
            **under("packages/app", package("base:1", {"extra": "extra:1"})),
        },
    )
    with pytest.raises(RequirementsError, match=r"deployment apps/web: unrecognized feature.*nope"):
        _images(pallet, tmp_path)


def test_deployment_without_compose_files_needs_no_image(tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/host.deploy.yml": _deploy("/packages/host"),
            "packages/host/forklift-package.yml": "package:\n  description: host only\n",
        },
    )
    assert _images(pallet, tmp_path) == []


def test_package_from_workspace_repository_with_pseudoversion(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    repo = "github.com/example/device-pkgs"
    write_tree(
        workspace / f".cache/forklift/repositories/{repo}@v0.0.0-20250101000000-0123456789ab",
        {"forklift-repository.yml": "repository:\n  path: x\n", **under("web", package("web:1"))},
    )
    write_tree(
        workspace
        / f".cache/forklift/repositories/{repo}-more@v1.4.1-0.20250101000000-0123456789ab",
        under("tools/clock", package("clock:1")),
    )
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            f"requirements/repositories/{repo}/forklift-version-lock.yml": PSEUDO_LOCK,
            f"requirements/repositories/{repo}-more/forklift-version-lock.yml": (
                PSEUDO_LOCK_AFTER_TAG
            ),
            "deployments/web.deploy.yml": _deploy(f"{repo}/web"),
            "deployments/clock.deploy.yml": _deploy(f"{repo}-more/tools/clock"),
        },
    )
    assert _images(pallet, workspace) == ["clock:1", "web:1"]


def test_repository_missing_from_workspace_cache(tmp_path: Path) -> None:
    repo = "github.com/example/device-pkgs"
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            f"requirements/repositories/{repo}/forklift-version-lock.yml": (
                "type: version\ntag: v2.0.0\ncommit: abc\ntimestamp: '20250101000000'\n"
            ),
            "deployments/web.deploy.yml": _deploy(f"{repo}/web"),
        },
    )
    with pytest.raises(RequirementsError, match=rf"{repo}@v2.0.0 is not in the workspace cache"):
        _images(pallet, tmp_path / "ws")


def test_package_without_repository_requirement(tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/web.deploy.yml": _deploy("github.com/nobody/pkgs/web"),
        },
    )
    with pytest.raises(RequirementsError, match="no repository requirement .* provides"):
        _images(pallet, tmp_path)


def test_missing_local_package(tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/web.deploy.yml": _deploy("/packages/missing"),
        },
    )
    with pytest.raises(RequirementsError, match="the pallet has no package /packages/missing"):
        _images(pallet, tmp_path)


# Imports from a required pallet

BASE = "github.com/example/base"
BASE_LOCK = "type: version\ntag: v1.2.0\ncommit: 0123456789ab\ntimestamp: '20250101000000'\n"


def _base_pallet(workspace: Path) -> Path:
    """A required pallet in the workspace cache with three deployments and two features."""
    return write_tree(
        workspace / f".cache/forklift/pallets/{BASE}@v1.2.0",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="base"),
            "deployments/infra/proxy.deploy.yml": _deploy("/packages/proxy"),
            "deployments/infra/broker.deploy.yml": _deploy("/packages/broker"),
            "deployments/apps/legacy.deploy.yml": _deploy("/packages/legacy"),
            "features/infra.feature.yml": """
                modifiers:
                  - type: add
                    target: /deployments/infra
                  - target: /packages/proxy
                  - target: /packages/broker
            """,
            "features/broker.feature.yml": """
                modifiers:
                  - target: /deployments/infra/broker.deploy.yml
            """,
            **under("packages/proxy", package("proxy:1")),
            **under("packages/broker", package("broker:1")),
            **under("packages/legacy", package("legacy:1")),
        },
    )


def _layered_pallet(root: Path, imports: str, extra: dict[str, str] | None = None) -> Path:
    return write_tree(
        root,
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="layered"),
            f"requirements/pallets/{BASE}/forklift-version-lock.yml": BASE_LOCK,
            f"requirements/pallets/{BASE}/everything.imports.yml": imports,
            "deployments/own.deploy.yml": _deploy("/packages/own"),
            **under("packages/own", package("own:1")),
            **(extra or {}),
        },
    )


def test_import_add_everything(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    # Default modifier type: add, with source = target.
    imports = "modifiers:\n  - target: /deployments\n  - target: /packages\n"
    pallet = _layered_pallet(tmp_path / "p", imports)
    assert _images(pallet, workspace) == ["broker:1", "legacy:1", "own:1", "proxy:1"]


def test_import_add_then_remove_with_only_matching_any(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    imports = """
        modifiers:
          - type: add
            target: /deployments
          - type: add
            target: /packages
          - type: remove
            target: /deployments
            only-matching-any: [apps/*.deploy.yml, infra/broker.deploy.yml]
    """
    assert _images(_layered_pallet(tmp_path / "p", imports), workspace) == ["own:1", "proxy:1"]


def test_import_add_with_only_matching_any_and_source(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    # The broker deployment is mapped to a new place; its package comes with /packages.
    imports = """
        modifiers:
          - type: add
            source: /deployments/infra
            target: /deployments/imported
            only-matching-any: ["broker.*"]
          - source: /packages
            target: /packages
    """
    pallet = _layered_pallet(tmp_path / "p", imports)
    found = list_pallet_images(pallet, workspace, include_disabled=False, with_file_exports=False)
    assert [(i.written, i.deployments) for i in found] == [
        ("broker:1", ("imported/broker",)),
        ("own:1", ("own",)),
    ]


def test_import_add_feature_and_remove_feature(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    add_only = "modifiers:\n  - type: add-feature\n    source: infra\n"
    assert _images(_layered_pallet(tmp_path / "p1", add_only), workspace) == [
        "broker:1",
        "own:1",
        "proxy:1",
    ]
    add_then_remove = add_only + "  - type: remove-feature\n    source: broker\n"
    assert _images(_layered_pallet(tmp_path / "p2", add_then_remove), workspace) == [
        "own:1",
        "proxy:1",
    ]


def test_pallet_files_override_imported_files(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    pallet = _layered_pallet(
        tmp_path / "p",
        "modifiers:\n  - type: add-feature\n    source: infra\n",
        under("packages/proxy", package("my-proxy:2")),
    )
    assert _images(pallet, workspace) == ["broker:1", "my-proxy:2", "own:1"]


def test_all_import_groups_disabled_means_no_merge(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    imports = "disabled: true\nmodifiers:\n  - target: /deployments\n"
    pallet = _layered_pallet(tmp_path / "p", imports)
    assert _images(pallet, workspace) == ["own:1"]


def test_required_pallet_is_merged_recursively(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    root = "github.com/example/root"
    write_tree(
        workspace / f".cache/forklift/pallets/{root}@v0.1.0",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="root"),
            "deployments/deep.deploy.yml": _deploy("/packages/deep"),
            **under("packages/deep", package("deep:1")),
        },
    )
    base = _base_pallet(workspace)
    write_tree(
        base,
        {
            f"requirements/pallets/{root}/forklift-version-lock.yml": (
                "type: version\ntag: v0.1.0\ncommit: abc\ntimestamp: '20250101000000'\n"
            ),
            f"requirements/pallets/{root}/all.imports.yml": (
                "modifiers:\n  - target: /deployments\n  - target: /packages\n"
            ),
        },
    )
    imports = "modifiers:\n  - target: /deployments/deep.deploy.yml\n  - target: /packages/deep\n"
    pallet = _layered_pallet(tmp_path / "p", imports)
    assert _images(pallet, workspace) == ["deep:1", "own:1"]


def test_required_pallet_missing_from_cache(tmp_path: Path) -> None:
    pallet = _layered_pallet(tmp_path / "p", "modifiers:\n  - target: /deployments\n")
    with pytest.raises(RequirementsError, match=rf"required pallet {BASE}@v1.2.0 in the workspace"):
        _images(pallet, tmp_path / "empty-ws")


def test_unknown_modifier_type(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    pallet = _layered_pallet(tmp_path / "p", "modifiers:\n  - type: copy\n")
    with pytest.raises(RequirementsError, match="unknown modifier type copy"):
        _images(pallet, workspace)


def test_root_level_target_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    _base_pallet(workspace)
    pallet = _layered_pallet(
        tmp_path / "p", "modifiers:\n  - source: /forklift-pallet.yml\n    target: /x.yml\n"
    )
    with pytest.raises(RequirementsError, match="root-level file"):
        _images(pallet, workspace)


def test_not_a_pallet(tmp_path: Path) -> None:
    with pytest.raises(RequirementsError, match="no forklift-pallet.yml"):
        _images(tmp_path, tmp_path)
