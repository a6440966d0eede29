"""YAML as go-yaml v3 reads it, with compose-go's `!reset` and `!override` tags."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from forklift_boot.requirements.compose.model import ComposeError
from forklift_boot.requirements.files import compose_documents

# libyaml's parser when PyYAML has it (Debian's and PyPI's do): 3x faster on a big pallet.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YamlLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader with go-yaml v3's plain scalars and compose-go's custom tags."""


# YAML 1.2 core schema: `yes`, `on`, `2024-01-01` and `1:20` stay strings, as in go-yaml v3.
_YamlLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in [
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("int", r"^(?:[-+]?(?:0|[1-9][0-9]*|0[0-7]+)|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("merge", r"^<<$", "<"),
]:
    _YamlLoader.add_implicit_resolver(
        f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first)
    )


class _Reset:
    """A value tagged ``!reset``: dropped here, and removes what earlier files set."""


_RESET = _Reset()


@dataclass(frozen=True)
class _Override:
    """A value tagged ``!override``: replaces what earlier files set instead of merging."""

    value: Any


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> _Override:
    if isinstance(node, yaml.MappingNode):
        return _Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return _Override(loader.construct_sequence(node, deep=True))
    return _Override(loader.construct_scalar(node))  # type: ignore[arg-type]  # a ScalarNode


_YamlLoader.add_constructor("!reset", lambda loader, node: _RESET)
_YamlLoader.add_constructor("!override", _construct_override)


def _refuse_duplicate_keys(root: yaml.Node) -> None:
    """loader/reset.go: a key written twice in one mapping is an error (PyYAML keeps the last)."""
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[str, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    line = key.start_mark.line + 1
                    if key.value in lines:
                        raise ComposeError(
                            f'line {line}: mapping key "{key.value}" already defined '
                            f"at line {lines[key.value]}"
                        )
                    lines[key.value] = line
                stack += [key, value]
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _strip_tags(
    value: Any, path: tuple[str, ...] | None, where: str, resets: list[tuple[str, ...]]
) -> Any:
    """A copy without !reset values and !override wrappers, recording their paths.

    Copying also unshares YAML aliases, which go-yaml decodes into separate values.
    compose-go never matches paths below a sequence (it records `x.0` but compares `x[0]`),
    so those are not recorded (``path`` is None there).
    """
    if isinstance(value, _Override):
        if path is not None:
            resets.append(path)
        value = value.value
    if isinstance(value, dict):
        copy = {}
        for key, item in value.items():
            if not isinstance(key, str):
                location = f"in {where}" if where else "at top level"
                raise ComposeError(f"non-string key {location}: {go_string(key)}")
            key_path = None if path is None else (*path, key)
            if isinstance(item, _Reset):
                if key_path is not None:
                    resets.append(key_path)
                continue
            copy[key] = _strip_tags(item, key_path, f"{where}.{key}" if where else key, resets)
        return copy
    if isinstance(value, list):
        return [
            _strip_tags(item, None, f"{where}[{index}]", resets)
            for index, item in enumerate(value)
            if not isinstance(item, _Reset)
        ]
    return None if isinstance(value, _Reset) else value


def apply_resets(target: Any, resets: list[tuple[str, ...]], path: tuple[str, ...] = ()) -> None:
    """loader/reset.go Apply: drop what earlier files set where a !reset or !override is."""
    if not resets or not isinstance(target, dict):
        return
    for key in list(target):
        if any(path_matches((*path, key), reset) for reset in resets):
            del target[key]
        else:
            apply_resets(target[key], resets, (*path, key))


def path_matches(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """tree.Path.Matches: same length, and each part equal or `*`."""
    return len(path) == len(pattern) and all(
        p in ("*", part) for part, p in zip(path, pattern, strict=True)
    )


def go_string(value: Any) -> str:
    """A scalar as Go's %v prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "<nil>" if value is None else str(value)


def parse_yaml(content: bytes) -> list[tuple[Any, list[tuple[str, ...]]]]:
    """Each document, without its !reset/!override tags, and the paths they were at."""
    documents = []
    loader = _YamlLoader(content)
    try:
        for node in compose_documents(loader):
            _refuse_duplicate_keys(node)
            try:
                raw = loader.construct_document(node)
            except (ValueError, TypeError, AttributeError) as err:
                # PyYAML's constructors fail this way on explicit tags (`!!int abc`).
                raise ComposeError("invalid value for its explicit tag") from err
            resets: list[tuple[str, ...]] = []
            documents.append((_strip_tags(raw, (), "", resets), resets))
    finally:
        loader.dispose()
    return documents
