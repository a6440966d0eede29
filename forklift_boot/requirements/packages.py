"""Forklift packages: which compose files and file-export images a deployment of one uses."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.files import get_mapping, get_str, get_str_list, load_yaml_mapping
from forklift_boot.requirements.trees import check_inside, has_parent_step

PACKAGE_FILE = "forklift-package.yml"
_WHAT = "package file"


@dataclass(frozen=True)
class PackageParts:
    """The compose files and OCI-image file exports of a package's deployment or one feature."""

    compose_files: tuple[str, ...]
    oci_image_exports: tuple[str, ...]


@dataclass(frozen=True)
class PackageDir:
    """Where a package's files are, as Forklift opens them.

    ``path`` is the directory Forklift names the package by (``PathedFS.Path``, compose-go's
    working dir): in a pallet it is inside the pallet's own directory even when the package
    comes from a required pallet and that directory does not exist on disk. ``locate`` finds
    the file Forklift opens for a name relative to it (the pallet's own first, then the
    imported one); ``trees`` are where every file the package leads to must stay.
    """

    path: Path
    trees: tuple[Path, ...]
    locate: Callable[[str], Path | None] | None = None

    def file(self, name: str, where: Path) -> Path:
        """The real file Forklift opens for ``name``; a name leaving the package is refused."""
        # Forklift opens these through an fs.FS, which refuses absolute names and `..`.
        if name.startswith("/") or has_parent_step(name):
            raise RequirementsError(
                f"couldn't load package file {name} named in {where}: it is not inside the "
                f"package directory {self.path}; name it relative to the package",
                where,
            )
        name = posixpath.normpath(name)
        found = self.locate(name) if self.locate is not None else None
        file = found if found is not None else self.path / name
        if file.exists():
            check_inside(file, self.trees, f"named in {where}")
        return file


@dataclass(frozen=True)
class Package:
    path: str  # e.g. github.com/PlanktoScope/device-pkgs/core/infra/caddy-ingress
    directory: PackageDir
    file: Path  # the forklift-package.yml read
    deployment: PackageParts
    features: dict[str, PackageParts]

    def select(self, feature_names: list[str], deployment_name: str) -> list[PackageParts]:
        """The deployment's parts, then each enabled feature's in alphabetical order of name.

        Forklift sorts enabled features by name (0.8.0-alpha.1), not by declaration order.
        """
        unknown = [name for name in feature_names if name not in self.features]
        if unknown:
            raise RequirementsError(
                f"couldn't evaluate deployment {deployment_name}: unrecognized feature flags "
                f"{unknown} for package {self.path} (known: {sorted(self.features)}); "
                f"fix the deployment's `features` list",
                self.file,
            )
        return [self.deployment] + [self.features[name] for name in sorted(set(feature_names))]


def load_package(package_dir: PackageDir, package_path: str) -> Package:
    path = package_dir.file(PACKAGE_FILE, package_dir.path)
    if not path.is_file():
        raise RequirementsError(
            f"couldn't find package {package_path}: no {PACKAGE_FILE} in {package_dir.path}", path
        )
    data = load_yaml_mapping(path, _WHAT)
    features = {
        str(name): _parse_parts(spec, path, f"features.{name}")
        for name, spec in get_mapping(data, "features", path, _WHAT).items()
    }
    return Package(
        path=package_path,
        directory=package_dir,
        file=path,
        deployment=_parse_parts(data.get("deployment"), path, "deployment"),
        features=features,
    )


def _parse_parts(spec: Any, path: Path, where: str) -> PackageParts:
    if spec is None:
        return PackageParts((), ())
    if not isinstance(spec, dict):
        raise RequirementsError(f"couldn't parse {_WHAT} {path}: `{where}` must be a mapping", path)
    compose_files = get_str_list(spec, "compose-files", path, _WHAT)
    provides = get_mapping(spec, "provides", path, _WHAT)
    exports = provides.get("file-exports") or []
    if not isinstance(exports, list):
        raise RequirementsError(
            f"couldn't parse {_WHAT} {path}: `{where}.provides.file-exports` must be a list", path
        )
    images = []
    for export in exports:
        if not isinstance(export, dict):
            raise RequirementsError(
                f"couldn't parse {_WHAT} {path}: each of `{where}.provides.file-exports` "
                "must be a mapping",
                path,
            )
        if get_str(export, "source-type", path, _WHAT) == "oci-image":
            images.append(get_str(export, "url", path, _WHAT))
    # Forklift skips empty compose-file names when deciding whether an app exists.
    return PackageParts(tuple(f for f in compose_files if f), tuple(images))
