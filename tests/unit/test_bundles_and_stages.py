"""Staged bundles (new and old manifests) and the stage store's fallback bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements import (
    RequiredImage,
    applied_bundle_selector,
    list_bundle_images,
    list_stage_store_images,
)
from tests.treebuilder import package, under, write_tree


def new_bundle(
    images: dict[str, list[str]], oci_exports: dict[str, list[str]] | None = None
) -> str:
    """A v0.8.0-alpha.6+ manifest: compose images in exports, downloads = exports + images."""
    lines = ["forklift-version: v0.8.0-alpha.6", "deploys:"]
    lines += [f"  {name}: {{package: /packages/{name}}}" for name in images]
    lines.append("downloads:")
    for name, refs in images.items():
        extra = (oci_exports or {}).get(name, [])
        lines.append(f"  {name}: {{oci-image: [{', '.join(sorted(refs + extra))}]}}")
    lines.append("exports:")
    for name, refs in images.items():
        lines.append(f"  {name}: {{compose-app: {{name: {name}, images: [{', '.join(refs)}]}}}}")
    return "\n".join(lines) + "\n"


def _written(images: list[RequiredImage]) -> list[str]:
    return [image.written for image in images]


def test_new_bundle_lists_compose_images_from_its_manifest(tmp_path: Path) -> None:
    bundle = write_tree(
        tmp_path / "1",
        {"forklift-bundle.yml": new_bundle({"web": ["web:1", "db:2"], "proxy": ["proxy:3"]})},
    )
    assert _written(list_bundle_images(bundle, with_file_exports=False)) == [
        "db:2",
        "proxy:3",
        "web:1",
    ]


def test_new_bundle_with_file_exports_adds_download_images(tmp_path: Path) -> None:
    bundle = write_tree(
        tmp_path / "1",
        {"forklift-bundle.yml": new_bundle({"web": ["web:1"]}, {"web": ["ghcr.io/x/tool:1"]})},
    )
    assert _written(list_bundle_images(bundle, with_file_exports=True)) == [
        "ghcr.io/x/tool:1",
        "web:1",
    ]
    assert _written(list_bundle_images(bundle, with_file_exports=False)) == ["web:1"]


def test_old_bundle_is_evaluated_from_its_packages(tmp_path: Path) -> None:
    # Before v0.8.0-alpha.6 the manifest lists no images: the bundled packages are evaluated,
    # local /packages/x at packages/packages/x, others at packages/<package path>.
    manifest = """
        forklift-version: v0.7.3
        deploys:
          apps/web:
            package: github.com/example/pkgs/web
            features: [frontend]
          local:
            package: /packages/local
    """
    bundle = write_tree(
        tmp_path / "1",
        {
            "forklift-bundle.yml": manifest,
            **under(
                "packages/github.com/example/pkgs/web",
                package("web:1", {"frontend": "web-frontend:1", "unused": "unused:1"}),
            ),
            **under("packages/packages/local", package("local:1")),
        },
    )
    assert _written(list_bundle_images(bundle, with_file_exports=False)) == [
        "local:1",
        "web-frontend:1",
        "web:1",
    ]


def test_bundle_older_than_forklift_supports(tmp_path: Path) -> None:
    bundle = write_tree(tmp_path / "1", {"forklift-bundle.yml": "forklift-version: v0.6.0\n"})
    with pytest.raises(RequirementsError, match="older than v0.7.0"):
        list_bundle_images(bundle, with_file_exports=False)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(RequirementsError, match="no forklift-bundle.yml"):
        list_bundle_images(tmp_path, with_file_exports=False)


def _stage_store(root: Path, manifest: str) -> Path:
    """Bundles 1..5, each needing its own image b<N>:1 and the shared image common:1."""
    files = {"forklift-stage-store.yml": manifest}
    for index in range(1, 6):
        files[f"{index}/forklift-bundle.yml"] = new_bundle({"app": [f"b{index}:1", "common:1"]})
    return write_tree(root, files)


STORE = """
    forklift-version: v0.7.0
    staged:
      next: 5
      history: [1, 2, 3, 4]
      names:
        factory-reset: 1
"""


def test_stage_store_lists_every_fallback_bundle(tmp_path: Path) -> None:
    # next=5, current=4 (last of history), rollback=3, factory-reset=1; bundle 2 is unreferenced.
    store = _stage_store(tmp_path, STORE)
    images = list_stage_store_images(store, None, with_file_exports=False)
    assert _written(images) == ["b1:1", "b3:1", "b4:1", "b5:1", "common:1"]
    by_ref = {image.written: image.bundles for image in images}
    assert by_ref["b4:1"] == ("4 (current)",)
    assert by_ref["common:1"] == ("1 (factory-reset)", "3 (rollback)", "4 (current)", "5 (next)")


def test_stage_store_bundles_narrowed(tmp_path: Path) -> None:
    store = _stage_store(tmp_path, STORE)
    chosen = list_stage_store_images(store, ["next", "factory-reset"], with_file_exports=False)
    assert _written(chosen) == ["b1:1", "b5:1", "common:1"]
    assert _written(list_stage_store_images(store, ["2"], with_file_exports=False)) == [
        "b2:1",
        "common:1",
    ]


def test_stage_store_unknown_bundle_name(tmp_path: Path) -> None:
    store = _stage_store(tmp_path, STORE)
    with pytest.raises(RequirementsError, match="couldn.t find a bundle named nope"):
        list_stage_store_images(store, ["nope"], with_file_exports=False)


def test_stage_store_with_only_next(tmp_path: Path) -> None:
    store = _stage_store(tmp_path, "staged:\n  next: 2\n")
    assert _written(list_stage_store_images(store, None, with_file_exports=False)) == [
        "b2:1",
        "common:1",
    ]
    with pytest.raises(RequirementsError, match="has no `current` bundle"):
        list_stage_store_images(store, ["current"], with_file_exports=False)


def test_empty_stage_store(tmp_path: Path) -> None:
    store = write_tree(tmp_path, {"forklift-stage-store.yml": "forklift-version: v0.7.0\n"})
    with pytest.raises(RequirementsError, match="no staged bundle .* stage a pallet first"):
        list_stage_store_images(store, None, with_file_exports=False)


def test_missing_stage_store(tmp_path: Path) -> None:
    with pytest.raises(RequirementsError, match="couldn't find the stage store"):
        list_stage_store_images(tmp_path / "nope", None, with_file_exports=False)


def test_stage_store_pointing_at_a_missing_bundle(tmp_path: Path) -> None:
    store = write_tree(tmp_path, {"forklift-stage-store.yml": "staged:\n  next: 7\n"})
    with pytest.raises(RequirementsError, match=r"couldn't find bundle 7 \(next\)"):
        list_stage_store_images(store, None, with_file_exports=False)


def test_images_of_the_applied_bundle_are_essential(tmp_path: Path) -> None:
    # next=5 is what `forklift stage apply` applies; the rest are fallbacks.
    store = _stage_store(tmp_path, STORE)
    essential = {
        i.written: i.essential
        for i in list_stage_store_images(store, None, with_file_exports=False)
    }
    assert essential == {
        "b1:1": False,
        "b3:1": False,
        "b4:1": False,
        "b5:1": True,
        "common:1": True,
    }


def test_after_a_failed_next_current_is_applied(tmp_path: Path) -> None:
    store = _stage_store(tmp_path, STORE.replace("next: 5", "next: 5\n      next-failed: true"))
    images = list_stage_store_images(store, None, with_file_exports=False)
    assert [i.written for i in images if i.essential] == ["b4:1", "common:1"]
    assert applied_bundle_selector(store) == ["4"]
