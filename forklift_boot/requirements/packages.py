"""Forklift packages: which compose files and file-export images a deployment of one uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.files import get_mapping, get_str, get_str_list, load_yaml_mapping

PACKAGE_FILE = "forklift-package.yml"
_WHAT = "package file"


@dataclass(frozen=True)
class PackageParts:
    """The compose files and OCI-image file exports of a package's deployment or one feature."""

    compose_files: tuple[str, ...]
    oci_image_exports: tuple[str, ...]


@dataclass(frozen=True)
class Package:
    path: str  # e.g. github.com/PlanktoScope/device-pkgs/core/infra/caddy-ingress
    package_dir: Path
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
                self.package_dir / PACKAGE_FILE,
            )
        return [self.deployment] + [self.features[name] for name in sorted(set(feature_names))]


def load_package(package_dir: Path, package_path: str) -> Package:
    path = package_dir / PACKAGE_FILE
    if not path.is_file():
        raise RequirementsError(
            f"couldn't find package {package_path}: no {PACKAGE_FILE} in {package_dir}", path
        )
    data = load_yaml_mapping(path, _WHAT)
    features = {
        str(name): _parse_parts(spec, path, f"features.{name}")
        for name, spec in get_mapping(data, "features", path, _WHAT).items()
    }
    return Package(
        path=package_path,
        package_dir=package_dir,
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
