"""One deployment of a package -> the images it needs, as Forklift evaluates it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from forklift_boot.requirements.compose import load_compose_services
from forklift_boot.requirements.packages import Package

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageUse:
    """One place that needs an image: a compose service, or a file export (service "")."""

    image: str  # the ref as written, after interpolation
    deployment: str
    service: str
    source: Path  # the file that names the image


def compose_app_name(deployment: str) -> str:
    """Forklift's ``GetComposeAppName``: the compose project name of a deployment."""
    return deployment.replace("/", "_")


def images_of_deployment(
    deployment: str, package: Package, features: list[str], *, with_file_exports: bool
) -> list[ImageUse]:
    parts = package.select(features, deployment)
    uses: list[ImageUse] = []
    names = [name for part in parts for name in part.compose_files]
    # A deployment with no compose files defines no app (Forklift's DefinesComposeApp).
    if names:
        # Forklift opens each compose file through the package's filesystem (an override in
        # the pallet wins, clients/docker/compose-loading.go) but names it, and hands
        # compose-go the directory, as inside the package's path (MergeFS.Path).
        directory = package.directory
        files = [directory.path / name for name in names]  # a file may be listed twice
        sources = {directory.path / name: directory.file(name, package.file) for name in names}
        services = load_compose_services(
            files,
            directory.path,
            compose_app_name(deployment),
            sources=sources,
            within=directory.trees,
        )
        for service in services:
            if not service.image:
                log.warning(
                    "deployment %s: service %s has `build:` but no `image:`; "
                    "Forklift never builds, so it is left out",
                    deployment,
                    service.name,
                )
                continue
            uses.append(ImageUse(service.image, deployment, service.name, service.compose_file))
    if with_file_exports:
        uses.extend(
            ImageUse(image, deployment, "", package.file)
            for part in parts
            for image in part.oci_image_exports
        )
    return uses
