"""Reading Forklift's YAML files into plain mappings, with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from forklift_boot.errors import RequirementsError


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; an empty file is an empty mapping."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise RequirementsError(f"couldn't find {what} {path}", path) from err
    except (OSError, UnicodeDecodeError) as err:
        raise RequirementsError(f"couldn't read {what} {path}: {err}", path) from err
    try:
        # libyaml's parser when PyYAML has it (Debian's and PyPI's do).
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise RequirementsError(
            f"couldn't parse {what} {path}: {_describe_yaml_error(err)}", path
        ) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RequirementsError(
            f"couldn't parse {what} {path}: expected a mapping at the top level, "
            f"found {_yaml_type(data)}",
            path,
        )
    return data


def get_mapping(data: dict[str, Any], key: str, path: Path, what: str) -> dict[str, Any]:
    """``data[key]`` as a mapping; absent or null means empty."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be a mapping, found {_yaml_type(value)}",
            path,
        )
    return value


def get_str_list(data: dict[str, Any], key: str, path: Path, what: str) -> list[str]:
    """``data[key]`` as a list of strings; absent or null means empty."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be a list of strings", path
        )
    return value


def get_str(data: dict[str, Any], key: str, path: Path, what: str) -> str:
    """``data[key]`` as a string; absent or null means empty. Numbers are kept as written."""
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be a string, found {_yaml_type(value)}",
            path,
        )
    return str(value)


def get_bool(data: dict[str, Any], key: str, path: Path, what: str) -> bool:
    value = data.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequirementsError(
            f"couldn't parse {what} {path}: `{key}` must be true or false", path
        )
    return value


def _describe_yaml_error(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{err.problem or err.context or 'invalid YAML'}{where}"
    return str(err).splitlines()[0]


def _yaml_type(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__
