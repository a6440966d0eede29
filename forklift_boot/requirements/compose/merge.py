"""Merging compose documents: the later one wins (compose-go override/merge.go)."""

from __future__ import annotations

from typing import Any

from forklift_boot.requirements.compose.model import ComposeError
from forklift_boot.requirements.compose.yaml_tags import go_string, path_matches


def _rule_paths(*paths: str) -> list[tuple[str, ...]]:
    return [tuple(path.split(".")) for path in paths]


# mergeSpecials: paths compose-go merges by a rule of their own instead of the generic one.
_MERGE_RULES: dict[tuple[str, ...], str] = {
    **dict.fromkeys(
        _rule_paths(
            "services.*.annotations",
            "services.*.build.args",
            "services.*.build.additional_contexts",
            "services.*.build.extra_hosts",  # compose-go also drops repeated entries here
            "services.*.build.labels",
            "services.*.deploy.labels",
            "services.*.dns",
            "services.*.dns_opt",
            "services.*.dns_search",
            "services.*.env_file",
            "services.*.label_file",
            "services.*.environment",
            "services.*.extra_hosts",  # idem
            "services.*.labels",
            "services.*.sysctls",
            "services.*.tmpfs",
            "networks.*.labels",
            "volumes.*.labels",
        ),
        "sequence",
    ),
    **dict.fromkeys(
        _rule_paths(
            "services.*.command",
            "services.*.entrypoint",
            "services.*.healthcheck.test",
            "services.*.ulimits.*",
            "networks.*.ipam.config",  # compose-go merges these by subnet; no image depends on it
        ),
        "override",
    ),
    **dict.fromkeys(_rule_paths("services.*.networks", "services.*.models"), "mapping"),
    ("services", "*", "depends_on"): "depends_on",
    ("services", "*", "build"): "build",
    ("services", "*", "logging"): "logging",
}


_DEPENDENCY = {"condition": "service_started", "required": True}


def merge(base: Any, other: Any, path: tuple[str, ...]) -> Any:
    """mergeYaml: ``other`` (a later file, or the extending service) wins over ``base``."""
    rule = next((r for pattern, r in _MERGE_RULES.items() if path_matches(path, pattern)), None)
    if rule == "override":
        return other
    if rule == "sequence":
        return _as_sequence(base) + _as_sequence(other)
    if rule in ("mapping", "depends_on"):
        default = _DEPENDENCY if rule == "depends_on" else None
        return _merge_mappings(_as_mapping(base, default), _as_mapping(other, default), path)
    if rule == "build":  # `build: dir` is short for `build: {context: dir}`
        return _merge_mappings(_as_build(base), _as_build(other), path)
    if rule == "logging" and isinstance(base, dict) and isinstance(other, dict):
        drivers = base.get("driver"), other.get("driver")
        if drivers[0] != drivers[1] and "driver" in base and "driver" in other:
            return other  # a different logging driver replaces the options too
    if other is None:
        return base
    if isinstance(base, dict):
        if not isinstance(other, dict):
            raise ComposeError(f"cannot override {'.'.join(path)}")
        return _merge_mappings(base, other, path)
    if isinstance(base, list):
        if not isinstance(other, list):
            raise ComposeError(f"cannot override {'.'.join(path)}")
        return base + other
    return other


def _merge_mappings(
    base: dict[str, Any], other: dict[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    for key, value in other.items():
        base[key] = merge(base[key], value, (*path, key)) if key in base else value
    return base


def _as_sequence(value: Any) -> list[Any]:
    """convertIntoSequence: a mapping becomes sorted `key=value` strings."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    items: list[str] = []
    for key, item in value.items():
        if item is None:
            items.append(key)
        else:
            values = item if isinstance(item, list) else [item]
            items += [f"{key}={go_string(v)}" for v in values]
    return sorted(items)


def _as_mapping(value: Any, default: dict[str, Any] | None) -> dict[str, Any]:
    """convertIntoMapping: a list of names becomes a mapping of names to ``default``."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        return {str(name): None if default is None else dict(default) for name in value}
    return {}


def _as_build(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"context": value}
    return value if isinstance(value, dict) else {}


def check_services(model: dict[str, Any]) -> None:
    """The part of compose-go's schema validation that the image list depends on."""
    services = model.get("services", {})
    if not isinstance(services, dict):
        raise ComposeError("services must be a mapping")
    for name, service in services.items():
        if not isinstance(service, dict):
            raise ComposeError(f"services.{name} must be a mapping")
        if "image" in service and not isinstance(service["image"], str):
            raise ComposeError(f"services.{name}.image must be a string")
        profiles = service.get("profiles", [])
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            raise ComposeError(f"services.{name}.profiles must be a list of strings")
