"""Docker Compose files -> the images of a project's enabled services, as Forklift v0.8.0 sees them.

Forklift loads a deployment with compose-go v2.7.1 ``loader.LoadWithContext`` (an empty environment,
the package dir as working dir, the project name set imperatively, no profiles). This module follows
that loader for everything that decides which services exist and which image each one names:
interpolation, multi-file merge, ``extends``, ``include``, ``!reset``/``!override`` and profiles.
It does not implement the rest of compose-go's schema validation, type casts or canonical forms.
"""

from __future__ import annotations

import logging
import os
import re
import string
from collections import ChainMap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forklift_boot.errors import RequirementsError

log = logging.getLogger(__name__)

PROJECT_NAME_VARIABLE = "COMPOSE_PROJECT_NAME"


@dataclass(frozen=True)
class ComposeService:
    name: str
    image: str  # "" for a build-only service
    compose_file: Path  # the file whose definition set the final image (for error messages)


def load_compose_services(
    compose_files: Sequence[Path],
    working_dir: Path,
    project_name: str,
    environment: Mapping[str, str] | None = None,
) -> list[ComposeService]:
    """The enabled services (no profiles), sorted by name."""
    if not compose_files:
        raise RequirementsError("couldn't load compose files: no compose file specified", None)
    files = [_join(working_dir, file) for file in compose_files]
    if _normalize_project_name(project_name) != project_name:
        raise _load_error(
            files[0],
            f'invalid project name "{project_name}": must consist only of lowercase alphanumeric '
            "characters, hyphens, and underscores as well as start with a letter or number",
        )
    # loader.go projectName(): the name is always added to the interpolation environment.
    env = {**(environment or {}), PROJECT_NAME_VARIABLE: project_name}
    model = _load_model(files, _Context(env, _join(working_dir, "."), _join(working_dir, "."), ()))
    if not model:
        raise _load_error(files[0], "empty compose file")
    if not project_name:
        raise _load_error(files[0], "project name must not be empty")
    return _enabled_services(model, files[0])


# --- Loading files ---------------------------------------------------------------------------


class _ComposeError(Exception):
    """A compose-go error message; the caller adds the file it came from."""


class _Sourced(str):
    """A string that remembers the compose file it was read from."""

    file: Path

    def __new__(cls, text: str, file: Path) -> _Sourced:
        sourced = super().__new__(cls, text)
        sourced.file = file
        return sourced


@dataclass(frozen=True)
class _Context:
    env: Mapping[str, str]
    # compose-go's localResourceLoader dir: relative `include` paths and a top-level service's
    # `extends.file` are resolved here (the package dir), not in the including file's dir.
    resolver_dir: Path
    working_dir: Path  # relative `include` project_directory and env_file are resolved here
    included: tuple[Path, ...]  # the chain of files that included this one, for cycle errors


@dataclass(frozen=True)
class _Document:
    data: dict[str, Any]
    resets: list[tuple[str, ...]]  # paths tagged !reset or !override


def _load_model(files: Sequence[Path], ctx: _Context) -> dict[str, Any]:
    """loader.go loadYamlModel: each document of each file is expanded, then merged in order."""
    model: dict[str, Any] = {}
    for file in files:
        for doc in _read_documents(file, ctx.env):
            try:
                _apply_extends(doc.data, file, ctx, doc.resets)
                _apply_resets(model, doc.resets)
                _apply_includes(doc.data, file, ctx)
                model = _merge(model, doc.data, ())
                _check_services(model)
            except _ComposeError as err:
                raise _load_error(file, str(err)) from err
    return model


def _load_error(file: Path, cause: str) -> RequirementsError:
    return RequirementsError(f"couldn't load compose file {file}: {cause}", file)


def _join(base: Path, path: str | Path) -> Path:
    """Go's filepath.Join: an absolute path wins, and the result is cleaned."""
    return Path(os.path.normpath(os.path.join(base, path)))


def _read_documents(file: Path, env: Mapping[str, str]) -> list[_Document]:
    """Every YAML document of a file, with tags resolved and every string value interpolated."""
    try:
        content = file.read_bytes()
    except OSError as err:
        raise _load_error(file, (err.strerror or str(err)).lower()) from err
    try:
        return [_expand(raw, resets, env, file) for raw, resets in _parse_yaml(content)]
    except yaml.YAMLError as err:
        raise _load_error(file, _describe_yaml_error(err)) from err
    except RecursionError as err:
        raise _load_error(file, "recursive YAML alias") from err
    except _ComposeError as err:
        raise _load_error(file, str(err)) from err


def _parse_yaml(content: bytes) -> list[tuple[Any, list[tuple[str, ...]]]]:
    """Each document, without its !reset/!override tags, and the paths they were at."""
    documents = []
    loader = _YamlLoader(content)
    try:
        while loader.check_node() and (node := loader.get_node()) is not None:
            _refuse_duplicate_keys(node)
            try:
                raw = loader.construct_document(node)
            except (ValueError, TypeError, AttributeError) as err:
                # PyYAML's constructors fail this way on explicit tags (`!!int abc`).
                raise _ComposeError(f"invalid value: {err}") from err
            resets: list[tuple[str, ...]] = []
            documents.append((_strip_tags(raw, (), "", resets), resets))
    finally:
        loader.dispose()
    return documents


def _expand(
    data: Any, resets: list[tuple[str, ...]], env: Mapping[str, str], file: Path
) -> _Document:
    if not isinstance(data, dict):
        raise _ComposeError("top-level object must be a mapping")
    data = _interpolate(data, "", env)
    _mark_sources(data, file)
    return _Document(data, resets)


def _mark_sources(data: dict[str, Any], file: Path) -> None:
    """Tag service names and images with their file, so merges carry it along."""
    services = data.get("services")
    if not isinstance(services, dict):
        return
    data["services"] = {_Sourced(name, file): service for name, service in services.items()}
    for service in services.values():
        if isinstance(service, dict) and isinstance(service.get("image"), str):
            service["image"] = _Sourced(service["image"], file)


# --- YAML as go-yaml v3 reads it ---------------------------------------------------------------


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
                        raise _ComposeError(
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
                raise _ComposeError(f"non-string key {location}: {_go_string(key)}")
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


def _apply_resets(target: Any, resets: list[tuple[str, ...]], path: tuple[str, ...] = ()) -> None:
    """loader/reset.go Apply: drop what earlier files set where a !reset or !override is."""
    if not resets or not isinstance(target, dict):
        return
    for key in list(target):
        if any(_path_matches((*path, key), reset) for reset in resets):
            del target[key]
        else:
            _apply_resets(target[key], resets, (*path, key))


def _path_matches(path: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """tree.Path.Matches: same length, and each part equal or `*`."""
    return len(path) == len(pattern) and all(
        p in ("*", part) for part, p in zip(path, pattern, strict=True)
    )


def _describe_yaml_error(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark, problem = err.problem_mark, err.problem or err.context or "invalid YAML"
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(err).splitlines()[0]


def _go_string(value: Any) -> str:
    """A scalar as Go's %v prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "<nil>" if value is None else str(value)


# --- Interpolation (compose-go interpolation/ and template/template.go) --------------------------


class _TemplateError(Exception):
    pass


class _InvalidTemplate(_TemplateError):
    def __init__(self, template: str) -> None:
        super().__init__(f'Invalid template: "{template}"')
        self.template = template


class _MissingVariable(_TemplateError):
    def __init__(self, name: str, reason: str) -> None:
        message = f"required variable {name} is missing a value"
        super().__init__(f"{message}: {reason}" if reason else message)


def _interpolate(value: Any, path: str, env: Mapping[str, str]) -> Any:
    """Substitute variables in every string value; keys are left alone."""
    if isinstance(value, str):
        try:
            return _substitute(value, env)
        except _InvalidTemplate as err:
            raise _ComposeError(
                f'invalid interpolation format for {path}: "{err.template}" '
                "(you may need to escape any $ with another $)"
            ) from err
        except _TemplateError as err:
            raise _ComposeError(f"error while interpolating {path}: {err}") from err
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else k, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, f"{path}.[]", env) for item in value]
    return value


_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_CHARS = _NAME_START | frozenset(string.digits)


def _substitute(template: str, env: Mapping[str, str]) -> str:
    """Expand ``$$``, ``$NAME``, ``${NAME}`` and ``${NAME<op>word}``; any other ``$`` is kept."""
    out: list[str] = []
    pos = 0
    while (dollar := template.find("$", pos)) != -1:
        out.append(template[pos:dollar])
        follower = template[dollar + 1 : dollar + 2]
        if follower == "$":
            out.append("$")
            pos = dollar + 2
        elif follower in _NAME_START:
            end = _name_end(template, dollar + 1)
            out.append(_lookup(template[dollar + 1 : end], env))
            pos = end
        elif follower == "{":
            text, pos = _substitute_braced(template, dollar, env)
            out.append(text)
        else:
            out.append("$")
            pos = dollar + 1
    out.append(template[pos:])
    return "".join(out)


def _name_end(text: str, start: int) -> int:
    end = start
    if end < len(text) and text[end] in _NAME_START:
        while end < len(text) and text[end] in _NAME_CHARS:
            end += 1
    return end


def _substitute_braced(template: str, dollar: int, env: Mapping[str, str]) -> tuple[str, int]:
    """The ``${...}`` at ``dollar``: its expansion and where the text after it starts."""
    name_end = _name_end(template, dollar + 2)
    name = template[dollar + 2 : name_end]
    line_end = template.find("\n", name_end)
    line_end = len(template) if line_end == -1 else line_end
    if name and template.startswith("}", name_end):
        return _lookup(name, env), name_end + 1
    operators = (":-", ":+", ":?", "-", "+", "?")
    operator = next((op for op in operators if template.startswith(op, name_end)), "")
    # compose-go's pattern `(.*)}` is greedy, so its match runs to the last `}` of the line ...
    close = template.rfind("}", name_end + len(operator), line_end) if name and operator else -1
    if close == -1:
        raise _InvalidTemplate(template)
    match = template[dollar : close + 1]
    # ... then it cuts the match at the brace that closes `${` and expands the rest on its own.
    first = _first_closing_brace(match)
    body, rest = (match[2:first], match[first + 1 :]) if first != -1 else (match[2:-1], "")
    value = _apply_operator(name, operator, body[len(name) + len(operator) :], env)
    return value + _substitute(rest, env), close + 1


def _first_closing_brace(text: str) -> int:
    """template.go getFirstBraceClosingIndex, including its skip of the character after `{`."""
    depth, index = 0, 0
    while index < len(text):
        if text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
        if text[index] == "{":
            depth += 1
            index += 1
        index += 1
    return -1


def _apply_operator(name: str, operator: str, word: str, env: Mapping[str, str]) -> str:
    # compose-go expands the word before it looks at the variable, so `${SET:-${X:?}}` fails
    # and `${SET:-$UNSET}` warns even though the default is not used.
    word = _substitute(word, env)
    value = env.get(name)
    if operator in (":-", "-"):
        use_word = value is None or (operator == ":-" and value == "")
        return word if use_word else str(value)
    if operator in (":+", "+"):
        use_word = value is not None and (operator == "+" or value != "")
        return word if use_word else (value or "")
    if value is None or (operator == ":?" and value == ""):
        raise _MissingVariable(name, word)
    return value


def _lookup(name: str, env: Mapping[str, str]) -> str:
    value = env.get(name)
    if value is None:
        log.warning('The "%s" variable is not set. Defaulting to a blank string.', name)
        return ""
    return value


# --- Merging (compose-go override/merge.go) -----------------------------------------------------


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


def _merge(base: Any, other: Any, path: tuple[str, ...]) -> Any:
    """mergeYaml: ``other`` (a later file, or the extending service) wins over ``base``."""
    rule = next((r for pattern, r in _MERGE_RULES.items() if _path_matches(path, pattern)), None)
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
            raise _ComposeError(f"cannot override {'.'.join(path)}")
        return _merge_mappings(base, other, path)
    if isinstance(base, list):
        if not isinstance(other, list):
            raise _ComposeError(f"cannot override {'.'.join(path)}")
        return base + other
    return other


def _merge_mappings(
    base: dict[str, Any], other: dict[str, Any], path: tuple[str, ...]
) -> dict[str, Any]:
    for key, value in other.items():
        base[key] = _merge(base[key], value, (*path, key)) if key in base else value
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
            items += [f"{key}={_go_string(v)}" for v in values]
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


def _check_services(model: dict[str, Any]) -> None:
    """The part of compose-go's schema validation that the image list depends on."""
    services = model.get("services", {})
    if not isinstance(services, dict):
        raise _ComposeError("services must be a mapping")
    for name, service in services.items():
        if not isinstance(service, dict):
            raise _ComposeError(f"services.{name} must be a mapping")
        if "image" in service and not isinstance(service["image"], str):
            raise _ComposeError(f"services.{name}.image must be a string")
        profiles = service.get("profiles", [])
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            raise _ComposeError(f"services.{name}.profiles must be a list of strings")


# --- extends (compose-go loader/extends.go) -----------------------------------------------------


def _apply_extends(
    data: dict[str, Any], file: Path, ctx: _Context, resets: list[tuple[str, ...]]
) -> None:
    """Resolve `extends` within one document: a service can only extend its own file or `file:`."""
    if "services" not in data:
        return
    services = data["services"]
    if not isinstance(services, dict):
        raise _ComposeError("services must be a mapping")
    for name in list(services):
        services[name] = _extend(
            name, services, services_dir=ctx.resolver_dir, file=file, ctx=ctx, resets=[resets]
        )


def _extend(
    name: str,
    services: dict[str, Any],
    *,
    services_dir: Path,  # where the `extends.file` of these services is relative to
    file: Path,
    ctx: _Context,
    resets: list[list[tuple[str, ...]]],
    chain: tuple[tuple[str, str], ...] = (),  # (file, service) steps so far, for cycle errors
) -> Any:
    service = services[name]
    if service is None:
        return None
    if not isinstance(service, dict):
        raise _ComposeError(f"services.{name} must be a mapping")
    if "extends" not in service:
        return service
    ref, ref_file = _extends_target(name, service["extends"])
    where = str(file)
    if ref_file is not None:
        ref_path = _join(services_dir, ref_file)
        services, ref_resets = _services_to_extend(
            name, ref, ref_path=ref_path, ref_file=ref_file, file=file, ctx=ctx
        )
        # extends.go resolves the base file's own `extends.file` paths against its directory.
        services_dir, resets, where = ref_path.parent, [*resets, ref_resets], ref_file
    elif ref not in services:
        raise _ComposeError(f'cannot extend service "{name}" in {file}: service "{ref}" not found')
    if (where, name) in chain:
        steps = [f"{chain[0][1]} in {chain[0][0]}"]
        steps += [f"extends {s} in {f}" for f, s in [*chain[1:], (where, name)]]
        raise _ComposeError("Circular reference: " + ", ".join(steps))
    base = _extend(
        ref,
        services,
        services_dir=services_dir,
        file=file,
        ctx=ctx,
        resets=resets,
        chain=(*chain, (where, name)),
    )
    if base is None:
        return service
    source = _copy(base)
    for paths in resets:
        _apply_resets({"services": {name: source}}, paths)
    merged = _merge(source, service, ("services", "x"))
    merged.pop("extends", None)
    services[name] = merged
    return merged


def _extends_target(name: str, extends: Any) -> tuple[str, str | None]:
    """The service and, if any, the file that ``extends`` names."""
    if isinstance(extends, str):
        return extends, None
    if not isinstance(extends, dict):
        return "", None
    ref, ref_file = extends.get("service"), extends.get("file")
    if not isinstance(ref, str):
        raise _ComposeError(f"extends.{name}.service is required")
    if ref_file is not None and not isinstance(ref_file, str):
        raise _ComposeError(f"services.{name}.extends.file must be a string")
    return ref, ref_file


def _copy(value: Any) -> Any:
    """extends.go deepClone (copy.deepcopy cannot rebuild a _Sourced)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _services_to_extend(
    name: str, ref: str, *, ref_path: Path, ref_file: str, file: Path, ctx: _Context
) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """The services of an `extends.file`, read without its own extends or includes."""
    model: dict[str, Any] = {}
    resets: list[tuple[str, ...]] = []
    for doc in _read_documents(ref_path, ctx.env):
        _apply_resets(model, doc.resets)
        try:
            model = _merge(model, doc.data, ())
        except _ComposeError as err:
            raise _load_error(ref_path, str(err)) from err
        resets = doc.resets
    if "services" not in model:
        raise _ComposeError(f'cannot extend service "{name}" in {ref_path}: no services section')
    services = model["services"]
    if not isinstance(services, dict):
        raise _ComposeError(
            f'cannot extend service "{name}" in {ref_path}: services must be a mapping'
        )
    if ref not in services:
        raise _ComposeError(
            f'cannot extend service "{name}" in {file}: service "{ref}" not found in {ref_file}'
        )
    return services, resets


# --- include (compose-go loader/include.go) -----------------------------------------------------


def _apply_includes(data: dict[str, Any], file: Path, ctx: _Context) -> None:
    """Add the resources of included projects to this document; a clash is an error."""
    if data.get("include") is None:
        data.pop("include", None)
        return
    entries = data.pop("include")
    if not isinstance(entries, list):
        raise _ComposeError(f"`include` must be a list, got {entries}")
    included = (*ctx.included, file)
    for entry in entries:
        paths, project_dir, env_files = _include_entry(entry)
        if not paths:
            continue
        files = [_join(ctx.resolver_dir, path) for path in paths]
        if files[0] in included:
            chain = " include ".join(str(f) for f in [*included[1:], files[0]])
            raise _ComposeError(f"include cycle detected: {included[0]} include {chain}")
        # The first file's directory is the default project directory.
        project = _join(ctx.working_dir, project_dir) if project_dir else files[0].parent
        file_env = _read_env_files(_include_env_files(env_files, project, ctx), ctx.env)
        # types.Mapping.Merge: the environment wins over the env files.
        env = {**file_env, **ctx.env}
        # compose-go resolves a nested include's relative project_directory and env_file
        # against a relative dir (really the process's cwd); here they use the project dir.
        imported = _load_model(files, _Context(env, project, project, included))
        _import_resources(imported, data)


def _include_entry(entry: Any) -> tuple[list[str], str, list[str]]:
    if isinstance(entry, str):
        return [entry], "", []
    if not isinstance(entry, dict):
        raise _ComposeError(f"invalid include entry: {entry}")
    project_dir = entry.get("project_directory") or ""
    if not isinstance(project_dir, str):
        raise _ComposeError("include.project_directory must be a string")
    paths = _string_list(entry.get("path"), "path")
    return paths, project_dir, _string_list(entry.get("env_file"), "env_file")


def _string_list(value: Any, key: str) -> list[str]:
    """types.StringList: a string or a list of strings."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise _ComposeError(f"include.{key} must be a string or a list of strings")


def _include_env_files(env_files: list[str], project: Path, ctx: _Context) -> list[Path]:
    if not env_files:
        default = project / ".env"
        return [default] if default.is_file() else []
    paths = []
    for name in env_files:
        path = _join(ctx.working_dir, name)
        if not os.path.isabs(name):
            if not path.exists():
                raise _ComposeError(f"stat {path}: no such file or directory")
            if path.is_dir():
                raise _ComposeError(f"{path} is not a file")
        paths.append(path)
    return paths


def _import_resources(imported: dict[str, Any], data: dict[str, Any]) -> None:
    """importResources: only resources of the including document itself can clash."""
    for key in ("services", "volumes", "networks", "secrets", "configs"):
        source = imported.get(key)
        if source is None:
            continue
        target = data.get(key) or {}
        if not isinstance(source, dict) or not isinstance(target, dict):
            raise _ComposeError(f"{key} must be a mapping")
        for name, resource in source.items():
            if name in target:
                if resource == target[name]:
                    continue
                raise _ComposeError(f"{key}.{name} conflicts with imported resource")
            target[name] = resource
        data[key] = target


# --- env files (compose-go dotenv/) --------------------------------------------------------------


def _read_env_files(paths: list[Path], env: Mapping[str, str]) -> dict[str, str]:
    """dotenv.GetEnvFromFile: later files win; values may use the environment and earlier files."""
    values: dict[str, str] = {}
    for path in paths:
        if not path.exists():
            raise _ComposeError(f"couldn't find env file: {path}")
        if path.is_dir():
            raise _ComposeError(f"{path} is a directory")
        try:
            text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
            values.update(_parse_env_file(text, ChainMap(dict(env), values)))
        except (OSError, UnicodeDecodeError, _TemplateError, _ComposeError) as err:
            raise _ComposeError(f"failed to read {path}: {err}") from err
    return values


_ENV_EXPORT = re.compile(r"export\s+")
_ENV_SPACE = " \t\v\f\r\x85\xa0"  # dotenv isSpace: white space but not a line break
_ENV_ESCAPE = re.compile(r'\\(?:[abcfnrtv$"\\]|0[0-9]{0,3})')
_ENV_ESCAPED = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    '"': '"', "\\": "\\", "$": "$$",  # `\$` is a literal `$`, written `$$` for the expansion
}  # fmt: skip


def _parse_env_file(text: str, lookup: Mapping[str, str]) -> dict[str, str]:
    """`KEY=value` statements with `export`, comments, quotes and variable expansion."""
    values: dict[str, str] = {}
    expand_with = ChainMap(dict(lookup), values)  # dotenv looks in the environment first
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return values
        if text[pos] == "#":
            pos = text.find("\n", pos)
            if pos == -1:
                return values
            continue
        if _ENV_EXPORT.match(text, pos):
            pos += len("export")
            while pos < len(text) and text[pos] in _ENV_SPACE:
                pos += 1
        key, pos, inherited = _env_key(text, pos)
        while pos < len(text) and text[pos] in _ENV_SPACE:
            pos += 1
        if inherited:  # a bare `KEY` takes its value from the environment
            if key in lookup:
                values[key] = lookup[key]
            continue
        values[key], pos = _env_value(text, pos, expand_with)


def _env_key(text: str, start: int) -> tuple[str, int, bool]:
    """The key at ``start``, where its value starts, and whether it has no value."""
    for index in range(start, len(text)):
        char = text[index]
        if char in "=:\n":
            key = text[start:index].rstrip()
            if " " in key:
                raise _ComposeError(f"line {_line_of(text, index)}: key cannot contain a space")
            return key, index + 1, char == "\n"
        if not (char in _ENV_SPACE or char in "_.-[]" or char.isalnum()):
            line = text[start:].split("\n", 1)[0]
            raise _ComposeError(
                f'line {_line_of(text, index)}: unexpected character "{char}" '
                f'in variable name "{line}"'
            )
    return "", start, False  # compose-go then reads the whole statement as the value of ""


def _env_value(text: str, start: int, env: Mapping[str, str]) -> tuple[str, int]:
    quote = text[start : start + 1]
    if quote not in ("'", '"'):
        end = text.find("\n", start)
        end = len(text) if end == -1 else end
        value = text[start:end].split(" #", 1)[0].rstrip()
        return _substitute(value, env), end + 1
    chars: list[str] = []
    escaped = False
    for index in range(start + 1, len(text)):
        char = text[index]
        if char == quote and not escaped:
            value = "".join(chars)
            if quote == '"':
                value = _substitute(_ENV_ESCAPE.sub(_unescape, value), env)
            return value, index + 1
        if char == "\\" and not escaped:
            escaped = True
            continue
        if escaped and char != quote:
            chars.append("\\")
        escaped = False
        chars.append(char)
    line = text[start:].split("\n", 1)[0]
    raise _ComposeError(f"line {_line_of(text, start)}: unterminated quoted value {line}")


def _unescape(match: re.Match[str]) -> str:
    escape = match.group()
    if escape[1] != "0":
        return _ENV_ESCAPED.get(escape[1], escape)  # `\c` is not a Go escape and stays
    digits = escape[2:]  # `\0ddd` is an octal byte
    if len(digits) == 3 and all(d in "01234567" for d in digits) and int(digits, 8) < 256:
        return chr(int(digits, 8))
    return escape


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


# --- The project (compose-go loader.go modelToProject, types/project.go) ------------------------


def _enabled_services(model: dict[str, Any], first_file: Path) -> list[ComposeService]:
    services: dict[str, dict[str, Any]] = model.get("services", {})
    # WithProfiles(nil): a service with any profile is disabled, and nothing enables it.
    enabled = {name: s for name, s in services.items() if not s.get("profiles")}
    result: list[ComposeService] = []
    dependencies: dict[str, list[str]] = {}
    for name in sorted(enabled):
        service = enabled[name]
        image = service.get("image") or ""
        source = image if isinstance(image, _Sourced) else name
        file = source.file if isinstance(source, _Sourced) else first_file
        # validate.go checkConsistency, in the order compose-go checks.
        if not image and service.get("build") is None and service.get("provider") is None:
            raise _load_error(
                file,
                f'service "{name}" has neither an image nor a build context specified: '
                "invalid compose project",
            )
        depends_on = _depends_on(name, service, file)
        for dependency, required in depends_on.items():
            # A dependency on a disabled service is only allowed with `required: false`.
            if dependency not in enabled and (dependency not in services or required):
                raise _load_error(
                    file,
                    f'service "{name}" depends on undefined service "{dependency}": '
                    "invalid compose project",
                )
        dependencies[name] = [d for d in depends_on if d in enabled]
        result.append(ComposeService(str(name), str(image), file))
    if (cycle := _find_cycle(dependencies)) is not None:
        raise _load_error(first_file, f"dependency cycle detected: {cycle}")
    return result


def _depends_on(name: str, service: dict[str, Any], file: Path) -> dict[str, bool]:
    """Each dependency and whether it is required, including the implicit ones."""
    value = service.get("depends_on") or {}
    if isinstance(value, list):
        value = {str(dependency): {} for dependency in value}
    if not isinstance(value, dict):
        raise _load_error(file, f"services.{name}.depends_on: invalid type for depend_on")
    dependencies = {}
    for dependency, condition in value.items():
        if not isinstance(condition, dict):
            raise _load_error(file, f"services.{name}.depends_on.{dependency}: unsupported value")
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


def _normalize_project_name(name: str) -> str:
    """loader.go NormalizeProjectName."""
    kept = "".join(c for c in name.lower() if c in string.ascii_lowercase + string.digits + "_-")
    return kept.lstrip("_-")
