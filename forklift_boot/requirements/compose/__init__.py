"""Docker Compose files -> the images of a project's enabled services, as Forklift v0.8.0 sees them.

Forklift loads a deployment with compose-go v2.7.1 ``loader.LoadWithContext`` (an empty environment,
the package dir as working dir, the project name set imperatively, no profiles). This package
follows that loader for everything that decides which services exist and which image each one
names: interpolation, multi-file merge, ``extends``, ``include``, ``!reset``/``!override`` and
profiles. It does not implement the rest of compose-go's schema validation, type casts or
canonical forms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.compose.loader import load_model
from forklift_boot.requirements.compose.model import Context, join, load_error
from forklift_boot.requirements.compose.project import (
    ComposeService,
    enabled_services,
    normalize_project_name,
)

__all__ = ["PROJECT_NAME_VARIABLE", "ComposeService", "load_compose_services"]

PROJECT_NAME_VARIABLE = "COMPOSE_PROJECT_NAME"


def load_compose_services(
    compose_files: Sequence[Path],
    working_dir: Path,
    project_name: str,
    environment: Mapping[str, str] | None = None,
    *,
    sources: Mapping[Path, Path] | None = None,
    within: Sequence[Path] | None = None,
) -> list[ComposeService]:
    """The enabled services (no profiles), sorted by name.

    ``sources`` maps a compose file's name (as compose-go sees it) to the file to read when
    they differ; ``within`` lists the real directories that files the compose files lead to
    (``include``, ``extends: file:``, ``env_file``) must be inside.
    """
    if not compose_files:
        raise RequirementsError("couldn't load compose files: no compose file specified", None)
    files = [join(working_dir, file) for file in compose_files]
    if normalize_project_name(project_name) != project_name:
        raise load_error(
            files[0],
            f'invalid project name "{project_name}": must consist only of lowercase alphanumeric '
            "characters, hyphens, and underscores as well as start with a letter or number",
        )
    # loader.go projectName(): the name is always added to the interpolation environment.
    env = {**(environment or {}), PROJECT_NAME_VARIABLE: project_name}
    ctx = Context(
        env,
        join(working_dir, "."),
        join(working_dir, "."),
        (),
        {join(working_dir, name): file for name, file in (sources or {}).items()},
        tuple(within) if within is not None else None,
    )
    model = load_model(files, ctx)
    if not model:
        raise load_error(files[0], "empty compose file")
    if not project_name:
        raise load_error(files[0], "project name must not be empty")
    return enabled_services(model, files[0])
