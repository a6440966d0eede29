"""The services of a loaded compose model: enabled ones, their images and dependencies.

Follows compose-go's loader.go modelToProject and types/project.go.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklift_boot.requirements.compose.model import Sourced, load_error


@dataclass(frozen=True)
class ComposeService:
    name: str
    image: str  # "" for a build-only service
    compose_file: Path  # the file whose definition set the final image (for error messages)


def enabled_services(model: dict[str, Any], first_file: Path) -> list[ComposeService]:
    services: dict[str, dict[str, Any]] = model.get("services", {})
    # WithProfiles(nil): a service with any profile is disabled, and nothing enables it.
    enabled = {name: s for name, s in services.items() if not s.get("profiles")}
    result: list[ComposeService] = []
    dependencies: dict[str, list[str]] = {}
    for name in sorted(enabled):
        service = enabled[name]
        image = service.get("image") or ""
        source = image if isinstance(image, Sourced) else name
        file = source.file if isinstance(source, Sourced) else first_file
        # validate.go checkConsistency, in the order compose-go checks.
        if not image and service.get("build") is None and service.get("provider") is None:
            raise load_error(
                file,
                f'service "{name}" has neither an image nor a build context specified: '
                "invalid compose project",
            )
        depends_on = _depends_on(name, service, file)
        for dependency, required in depends_on.items():
            # A dependency on a disabled service is only allowed with `required: false`.
            if dependency not in enabled and (dependency not in services or required):
                raise load_error(
                    file,
                    f'service "{name}" depends on undefined service "{dependency}": '
                    "invalid compose project",
                )
        dependencies[name] = [d for d in depends_on if d in enabled]
        result.append(ComposeService(str(name), str(image), file))
    if (cycle := _find_cycle(dependencies)) is not None:
        raise load_error(first_file, f"dependency cycle detected: {cycle}")
    return result


def _depends_on(name: str, service: dict[str, Any], file: Path) -> dict[str, bool]:
    """Each dependency and whether it is required, including the implicit ones."""
    value = service.get("depends_on") or {}
    if isinstance(value, list):
        value = {str(dependency): {} for dependency in value}
    if not isinstance(value, dict):
        raise load_error(file, f"services.{name}.depends_on: invalid type for depend_on")
    dependencies = {}
    for dependency, condition in value.items():
        if not isinstance(condition, dict):
            raise load_error(file, f"services.{name}.depends_on.{dependency}: unsupported value")
        required = condition.get("required", True)
        dependencies[dependency] = required not in (False, "false", "False")
    # normalize.go: links, `service:` namespaces and volumes_from add required dependencies.
    implicit = []
    for link in _str_items(service.get("links")):
        parts = link.split(":")  # `service:alias`
        implicit.append(parts[0] if len(parts) == 2 else link)
    for namespace in ("network_mode", "ipc", "pid", "uts", "cgroup"):
        mode = service.get(namespace)
        if isinstance(mode, str) and mode.startswith("service:"):
            implicit.append(mode.removeprefix("service:"))
    for volumes_from in _str_items(service.get("volumes_from")):
        if not volumes_from.startswith("container:"):
            implicit.append(volumes_from.split(":")[0])
    for dependency in implicit:
        dependencies.setdefault(dependency, True)
    return dependencies


def _str_items(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else []


def _find_cycle(dependencies: dict[str, list[str]]) -> str | None:
    """graph/cycle.go: depth-first in name order; the first cycle found, as `a -> b -> a`."""

    def search(path: list[str]) -> str | None:
        for child in sorted(dependencies[path[-1]]):
            if child in path:
                return " -> ".join([*path[path.index(child) :], child])
            if (found := search([*path, child])) is not None:
                return found
        return None

    for name in sorted(dependencies):
        if (found := search([name])) is not None:
            return found
    return None


def normalize_project_name(name: str) -> str:
    """loader.go NormalizeProjectName."""
    kept = "".join(c for c in name.lower() if c in string.ascii_lowercase + string.digits + "_-")
    return kept.lstrip("_-")
