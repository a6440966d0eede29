"""One compose file -> its YAML documents, tags resolved, strings interpolated, images sourced."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from forklift_boot.requirements.compose.interpolation import interpolate
from forklift_boot.requirements.compose.model import ComposeError, Document, Sourced, load_error
from forklift_boot.requirements.compose.yaml_tags import parse_yaml
from forklift_boot.requirements.files import UnreadableFile, describe_yaml_error, read_regular_file


def read_documents(file: Path, env: Mapping[str, str]) -> list[Document]:
    """Every YAML document of a file, with tags resolved and every string value interpolated."""
    try:
        content = read_regular_file(file)
    except UnreadableFile as err:
        raise load_error(file, str(err)) from err
    try:
        return [_expand(raw, resets, env, file) for raw, resets in parse_yaml(content)]
    except yaml.YAMLError as err:
        raise load_error(file, describe_yaml_error(err)) from err
    except ComposeError as err:
        raise load_error(file, str(err)) from err


def _expand(
    data: Any, resets: list[tuple[str, ...]], env: Mapping[str, str], file: Path
) -> Document:
    if not isinstance(data, dict):
        raise ComposeError("top-level object must be a mapping")
    data = interpolate(data, "", env, file)
    _mark_sources(data, file)
    return Document(data, resets)


def _mark_sources(data: dict[str, Any], file: Path) -> None:
    """Tag service names and images with their file, so merges carry it along."""
    services = data.get("services")
    if not isinstance(services, dict):
        return
    data["services"] = {Sourced(name, file): service for name, service in services.items()}
    for service in services.values():
        if isinstance(service, dict) and isinstance(service.get("image"), str):
            service["image"] = Sourced(service["image"], file)
