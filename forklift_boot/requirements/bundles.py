"""Staged bundles: the images a ``forklift-bundle.yml`` records, or its packages evaluated."""

from __future__ import annotations

from pathlib import Path

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.deployments import ImageUse, images_of_deployment
from forklift_boot.requirements.files import (
    get_mapping,
    get_str,
    get_str_list,
    load_yaml_mapping,
)
from forklift_boot.requirements.packages import PackageDir, load_package
from forklift_boot.requirements.trees import package_subdir, real_tree
from forklift_boot.requirements.versions import is_version_at_least

BUNDLE_FILE = "forklift-bundle.yml"
# PR #364: bundles from this version on list their compose images in the manifest.
IMAGES_IN_MANIFEST_SINCE = "v0.8.0-alpha.6"
OLDEST_BUNDLE = "v0.7.0"  # Forklift's bundleMinVersion
_WHAT = "bundle manifest"


def images_of_bundle(bundle_dir: Path, *, with_file_exports: bool) -> list[ImageUse]:
    path = bundle_dir / BUNDLE_FILE
    if not path.is_file():
        raise RequirementsError(
            f"couldn't load bundle at {bundle_dir}: no {BUNDLE_FILE}; point at a staged bundle "
            "such as /var/lib/forklift/stages/1",
            path,
        )
    manifest = load_yaml_mapping(path, _WHAT)
    version = get_str(manifest, "forklift-version", path, _WHAT)
    if not is_version_at_least(version, OLDEST_BUNDLE):
        raise RequirementsError(
            f"couldn't load bundle {path}: forklift-version `{version}` is older than "
            f"{OLDEST_BUNDLE}, the oldest bundle Forklift can apply; stage the pallet again",
            path,
        )
    if is_version_at_least(version, IMAGES_IN_MANIFEST_SINCE):
        return _images_from_manifest(manifest, path, with_file_exports=with_file_exports)
    return _images_from_packages(manifest, bundle_dir, path, with_file_exports=with_file_exports)


def _images_from_manifest(
    manifest: dict[str, object], path: Path, *, with_file_exports: bool
) -> list[ImageUse]:
    """``exports.*.compose-app.images``, plus ``downloads.*.oci-image`` for file exports."""
    uses = []
    for deployment, exports in get_mapping(manifest, "exports", path, _WHAT).items():
        if not isinstance(exports, dict):
            raise RequirementsError(f"couldn't parse {_WHAT} {path}: exports.{deployment}", path)
        app = get_mapping(exports, "compose-app", path, _WHAT)
        for image in get_str_list(app, "images", path, _WHAT):
            uses.append(ImageUse(image, str(deployment), "", path))
    if with_file_exports:
        # downloads.*.oci-image is the union of file-export images and compose images.
        for deployment, downloads in get_mapping(manifest, "downloads", path, _WHAT).items():
            if not isinstance(downloads, dict):
                raise RequirementsError(
                    f"couldn't parse {_WHAT} {path}: downloads.{deployment}", path
                )
            for image in get_str_list(downloads, "oci-image", path, _WHAT):
                uses.append(ImageUse(image, str(deployment), "", path))
    return uses


def _images_from_packages(
    manifest: dict[str, object], bundle_dir: Path, path: Path, *, with_file_exports: bool
) -> list[ImageUse]:
    """Bundles before v0.8.0-alpha.6 record no images: evaluate their bundled packages."""
    uses = []
    for deployment, definition in get_mapping(manifest, "deploys", path, _WHAT).items():
        if not isinstance(definition, dict):
            raise RequirementsError(f"couldn't parse {_WHAT} {path}: deploys.{deployment}", path)
        package_path = get_str(definition, "package", path, _WHAT)
        features = get_str_list(definition, "features", path, _WHAT)
        # Forklift's FSBundle.LoadFSPkg: packages/<package path without its leading slash>.
        subdir = package_subdir(package_path, package_path, path)
        package_dir = PackageDir(bundle_dir / "packages" / subdir, (real_tree(bundle_dir),))
        package = load_package(package_dir, package_path)
        uses.extend(
            images_of_deployment(
                str(deployment), package, features, with_file_exports=with_file_exports
            )
        )
    return uses
