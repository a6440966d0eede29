"""A service's `extends`: its base service merged under it (compose-go loader/extends.go)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forklift_boot.requirements.compose.documents import read_documents
from forklift_boot.requirements.compose.merge import merge
from forklift_boot.requirements.compose.model import (
    ComposeError,
    Context,
    check_within,
    join,
    load_error,
)
from forklift_boot.requirements.compose.yaml_tags import apply_resets


def apply_extends(
    data: dict[str, Any], file: Path, ctx: Context, resets: list[tuple[str, ...]]
) -> None:
    """Resolve `extends` within one document: a service can only extend its own file or `file:`."""
    if "services" not in data:
        return
    services = data["services"]
    if not isinstance(services, dict):
        raise ComposeError("services must be a mapping")
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
    ctx: Context,
    resets: list[list[tuple[str, ...]]],
    chain: tuple[tuple[str, str], ...] = (),  # (file, service) steps so far, for cycle errors
) -> Any:
    service = services[name]
    if service is None:
        return None
    if not isinstance(service, dict):
        raise ComposeError(f"services.{name} must be a mapping")
    if "extends" not in service:
        return service
    ref, ref_file = _extends_target(name, service["extends"])
    where = str(file)
    if ref_file is not None:
        ref_path = join(services_dir, ref_file)
        check_within(ref_path, ctx, f"the `extends` file of service {name}")
        services, ref_resets = _services_to_extend(
            name, ref, ref_path=ref_path, ref_file=ref_file, file=file, ctx=ctx
        )
        # extends.go resolves the base file's own `extends.file` paths against its directory.
        services_dir, resets, where = ref_path.parent, [*resets, ref_resets], ref_file
    elif ref not in services:
        raise ComposeError(f'cannot extend service "{name}" in {file}: service "{ref}" not found')
    if (where, name) in chain:
        steps = [f"{chain[0][1]} in {chain[0][0]}"]
        steps += [f"extends {s} in {f}" for f, s in [*chain[1:], (where, name)]]
        raise ComposeError("Circular reference: " + ", ".join(steps))
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
        apply_resets({"services": {name: source}}, paths)
    merged = merge(source, service, ("services", "x"))
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
        raise ComposeError(f"extends.{name}.service is required")
    if ref_file is not None and not isinstance(ref_file, str):
        raise ComposeError(f"services.{name}.extends.file must be a string")
    return ref, ref_file


def _copy(value: Any) -> Any:
    """extends.go deepClone (copy.deepcopy cannot rebuild a Sourced)."""
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy(item) for item in value]
    return value


def _services_to_extend(
    name: str, ref: str, *, ref_path: Path, ref_file: str, file: Path, ctx: Context
) -> tuple[dict[str, Any], list[tuple[str, ...]]]:
    """The services of an `extends.file`, read without its own extends or includes."""
    model: dict[str, Any] = {}
    resets: list[tuple[str, ...]] = []
    for doc in read_documents(ref_path, ctx.env):
        apply_resets(model, doc.resets)
        try:
            model = merge(model, doc.data, ())
        except ComposeError as err:
            raise load_error(ref_path, str(err)) from err
        resets = doc.resets
    if "services" not in model:
        raise ComposeError(f'cannot extend service "{name}" in {ref_path}: no services section')
    services = model["services"]
    if not isinstance(services, dict):
        raise ComposeError(
            f'cannot extend service "{name}" in {ref_path}: services must be a mapping'
        )
    if ref not in services:
        raise ComposeError(
            f'cannot extend service "{name}" in {file}: service "{ref}" not found in {ref_file}'
        )
    return services, resets
