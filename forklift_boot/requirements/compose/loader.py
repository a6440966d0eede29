"""Compose files -> one merged model, with their `include`s (compose-go loader.go, include.go)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from forklift_boot.requirements.compose.documents import read_documents
from forklift_boot.requirements.compose.dotenv import read_env_files
from forklift_boot.requirements.compose.extends import apply_extends
from forklift_boot.requirements.compose.merge import check_services, merge
from forklift_boot.requirements.compose.model import (
    ComposeError,
    Context,
    check_within,
    join,
    load_error,
)
from forklift_boot.requirements.compose.yaml_tags import apply_resets


def load_model(files: Sequence[Path], ctx: Context) -> dict[str, Any]:
    """loader.go loadYamlModel: each document of each file is expanded, then merged in order."""
    model: dict[str, Any] = {}
    for file in files:
        for doc in read_documents(ctx.sources.get(file, file), ctx.env):
            try:
                apply_extends(doc.data, file, ctx, doc.resets)
                apply_resets(model, doc.resets)
                _apply_includes(doc.data, file, ctx)
                model = merge(model, doc.data, ())
                check_services(model)
            except ComposeError as err:
                raise load_error(file, str(err)) from err
    return model


def _apply_includes(data: dict[str, Any], file: Path, ctx: Context) -> None:
    """Add the resources of included projects to this document; a clash is an error."""
    if data.get("include") is None:
        data.pop("include", None)
        return
    entries = data.pop("include")
    if not isinstance(entries, list):
        raise ComposeError("`include` must be a list")
    included = (*ctx.included, file)
    for entry in entries:
        paths, project_dir, env_files = _include_entry(entry)
        if not paths:
            continue
        files = [join(ctx.resolver_dir, path) for path in paths]
        for included_file in files:
            check_within(included_file, ctx, "an `include` path")
        if files[0] in included:
            chain = " include ".join(str(f) for f in [*included[1:], files[0]])
            raise ComposeError(f"include cycle detected: {included[0]} include {chain}")
        # The first file's directory is the default project directory.
        project = join(ctx.working_dir, project_dir) if project_dir else files[0].parent
        env_paths = _include_env_files(env_files, project, ctx)
        for env_path in env_paths:
            check_within(env_path, ctx, "an `include` env_file")
        file_env = read_env_files(env_paths, ctx.env)
        # types.Mapping.Merge: the environment wins over the env files.
        env = {**file_env, **ctx.env}
        # compose-go resolves a nested include's relative project_directory and env_file
        # against a relative dir (really the process's cwd); here they use the project dir.
        imported = load_model(files, Context(env, project, project, included, within=ctx.within))
        _import_resources(imported, data)


def _include_entry(entry: Any) -> tuple[list[str], str, list[str]]:
    if isinstance(entry, str):
        return [entry], "", []
    if not isinstance(entry, dict):
        raise ComposeError("invalid include entry: it must be a string or a mapping")
    project_dir = entry.get("project_directory") or ""
    if not isinstance(project_dir, str):
        raise ComposeError("include.project_directory must be a string")
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
    raise ComposeError(f"include.{key} must be a string or a list of strings")


def _include_env_files(env_files: list[str], project: Path, ctx: Context) -> list[Path]:
    if not env_files:
        default = project / ".env"
        return [default] if default.is_file() else []
    paths = []
    for name in env_files:
        path = join(ctx.working_dir, name)
        if not os.path.isabs(name):
            if not path.exists():
                raise ComposeError(f"stat {path}: no such file or directory")
            if path.is_dir():
                raise ComposeError(f"{path} is not a file")
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
            raise ComposeError(f"{key} must be a mapping")
        for name, resource in source.items():
            if name in target:
                if resource == target[name]:
                    continue
                raise ComposeError(f"{key}.{name} conflicts with imported resource")
            target[name] = resource
        data[key] = target
