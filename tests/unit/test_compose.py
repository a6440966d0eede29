"""Compose files -> service images, checked against compose-go v2.7.1's rules worked by hand."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.compose import ComposeService, load_compose_services


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def images(
    root: Path, *files: Path, env: dict[str, str] | None = None, project: str = "demo"
) -> dict[str, str]:
    return {s.name: s.image for s in load_compose_services(files, root, project, env)}


def load_error(root: Path, *files: Path) -> str:
    with pytest.raises(RequirementsError) as caught:
        load_compose_services(files, root, "demo")
    return str(caught.value)


# --- Interpolation ---------------------------------------------------------------------------

ENV = {"SET": "v", "EMPTY": ""}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$SET", "v"),
        ("${SET}", "v"),
        ("${UNSET}", ""),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${UNSET-d}", "d"),
        ("${SET:+a}", "a"),
        ("${EMPTY:+a}", ""),
        ("${EMPTY+a}", "a"),
        ("${UNSET+a}", ""),
        ("${SET:?m}", "v"),
        ("${EMPTY?m}", ""),
        ("${UNSET:-${ALSO_UNSET:-z}}", "z"),
        ("${UNSET:-x}-${SET:-y}", "x-v"),
        ("$$SET", "$SET"),
        ("a$ $1", "a$ $1"),  # a `$` that starts no variable is kept
        ("${UNSET:-x}}", "x}"),  # the text after the closing brace is expanded on its own
    ],
)
def test_interpolation_forms(tmp_path: Path, template: str, expected: str) -> None:
    compose = write(tmp_path, "compose.yml", f"services:\n  web:\n    image: 'i{template}'\n")
    assert images(tmp_path, compose, env=ENV) == {"web": f"i{expected}"}


def test_unset_variable_warns_and_defaults_to_blank(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    compose = write(tmp_path, "compose.yml", "services:\n  web:\n    image: nginx:${TAG}\n")
    # Listen on the module's logger itself: the CLI may have stopped `forklift_boot` propagating.
    logger = logging.getLogger("forklift_boot.requirements.compose.interpolation")
    logger.addHandler(caplog.handler)
    try:
        assert images(tmp_path, compose) == {"web": "nginx:"}
    finally:
        logger.removeHandler(caplog.handler)
    # The variable's name is not quoted: in `pa$sw0rd` it would be part of a secret.
    assert (
        f"A variable in services.web.image of compose file {compose} is not set. "
        "Defaulting to a blank string."
    ) in caplog.messages
    assert not any("TAG" in message for message in caplog.messages)


def test_environment_is_only_the_project_name(tmp_path: Path) -> None:
    # Forklift passes an empty environment and compose-go adds COMPOSE_PROJECT_NAME, over any
    # given value; a .env file next to the top-level files is not read.
    write(tmp_path, ".env", "TAG=from-dotenv\n")
    compose = write(
        tmp_path,
        "compose.yml",
        """\
        services:
          web:
            image: registry/${COMPOSE_PROJECT_NAME}:${TAG:-none}
        """,
    )
    env = {"COMPOSE_PROJECT_NAME": "other"}
    assert images(tmp_path, compose, env=env, project="apps_web") == {
        "web": "registry/apps_web:none"
    }


def test_required_variable_fails_anywhere_in_the_file(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yml",
        """\
        x-unused: ${TOKEN:?set a token}
        services:
          web:
            image: nginx
        """,
    )
    assert load_error(tmp_path, compose) == (
        f"couldn't load compose file {compose}: error while interpolating x-unused: "
        "required variable is missing a value"
    )


def test_default_is_expanded_even_when_unused(tmp_path: Path) -> None:
    # template.go expands the word before it looks at the variable.
    compose = write(tmp_path, "compose.yml", "services:\n  web:\n    image: ${SET:-${NO?}}\n")
    with pytest.raises(RequirementsError) as caught:
        load_compose_services([compose], tmp_path, "demo", ENV)
    assert str(caught.value) == (
        f"couldn't load compose file {compose}: error while interpolating services.web.image: "
        "required variable is missing a value"
    )


def test_invalid_template_is_an_error(tmp_path: Path) -> None:
    compose = write(tmp_path, "compose.yml", "services:\n  web:\n    command: echo ${A B}\n")
    assert load_error(tmp_path, compose) == (
        f"couldn't load compose file {compose}: invalid interpolation format for "
        "services.web.command (you may need to escape any $ with another $)"
    )


def test_keys_are_not_interpolated(tmp_path: Path) -> None:
    compose = write(tmp_path, "compose.yml", "services:\n  web-${X}:\n    image: nginx\n")
    assert images(tmp_path, compose) == {"web-${X}": "nginx"}


# --- Several files ---------------------------------------------------------------------------


def test_later_file_overrides_image_and_adds_services(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "compose.yml",
        """\
        services:
          web: {image: nginx:1, ports: ["80:80"]}
          db: {image: postgres:16}
        """,
    )
    override = write(
        tmp_path,
        "features/compose-new.yml",
        """\
        services:
          web: {image: nginx:2}
          cache: {image: redis:7}
        """,
    )
    services = load_compose_services([base, override], tmp_path, "demo")
    assert services == [
        ComposeService("cache", "redis:7", override),
        ComposeService("db", "postgres:16", base),
        ComposeService("web", "nginx:2", override),
    ]


def test_build_may_come_from_another_file(tmp_path: Path) -> None:
    base = write(tmp_path, "compose.yml", "services:\n  app:\n    environment: [A=1]\n")
    build = write(tmp_path, "compose-build.yml", "services:\n  app:\n    build: ./app\n")
    services = load_compose_services([base, build], tmp_path, "demo")
    assert services == [ComposeService("app", "", base)]  # build-only: no image


def test_service_without_image_or_build_is_an_error(tmp_path: Path) -> None:
    compose = write(tmp_path, "compose.yml", "services:\n  app:\n    environment: [A=1]\n")
    assert load_error(tmp_path, compose) == (
        f'couldn\'t load compose file {compose}: service "app" has neither an image nor a '
        "build context specified: invalid compose project"
    )


def test_reset_and_override_tags(tmp_path: Path) -> None:
    base = write(
        tmp_path,
        "compose.yml",
        """\
        services:
          web: {image: nginx, build: ., profiles: [debug]}
        """,
    )
    override = write(
        tmp_path,
        "compose-override.yml",
        """\
        services:
          web:
            build: !reset null
            profiles: !override []
        """,
    )
    assert images(tmp_path, base, override) == {"web": "nginx"}


# --- extends ---------------------------------------------------------------------------------


def test_extends_inherits_image_unless_overridden(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yml",
        """\
        services:
          base: {image: alpine:3}
          child: {extends: base, command: ["true"]}
          grandchild: {extends: {service: child}}
          own: {extends: base, image: busybox}
        """,
    )
    assert images(tmp_path, compose) == {
        "base": "alpine:3",
        "child": "alpine:3",
        "grandchild": "alpine:3",
        "own": "busybox",
    }


def test_extends_file_is_relative_to_the_working_dir(tmp_path: Path) -> None:
    # loader/extends.go resolves a top-level file's `extends.file` with the project's resource
    # loader (the package dir); inside the extended file, paths are relative to that file.
    write(
        tmp_path, "common/base.yml", "services:\n  b:\n    extends: {file: root.yml, service: r}\n"
    )
    write(tmp_path, "common/root.yml", "services:\n  r:\n    image: alpine:3\n")
    feature = write(
        tmp_path,
        "features/compose.yml",
        "services:\n  web:\n    extends: {file: common/base.yml, service: b}\n",
    )
    services = load_compose_services([feature], tmp_path, "demo")
    assert services == [ComposeService("web", "alpine:3", tmp_path / "common/root.yml")]


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yml",
        "services:\n  a: {image: x, extends: b}\n  b: {image: y, extends: a}\n",
    )
    assert "Circular reference: " in load_error(tmp_path, compose)


def test_extends_only_sees_its_own_file(tmp_path: Path) -> None:
    base = write(tmp_path, "compose.yml", "services:\n  base:\n    image: alpine\n")
    other = write(tmp_path, "compose-2.yml", "services:\n  web:\n    extends: base\n")
    assert load_error(tmp_path, base, other) == (
        f'couldn\'t load compose file {other}: cannot extend service "web" in {other}: '
        'service "base" not found'
    )


# --- include ---------------------------------------------------------------------------------


def test_include_short_and_long_forms(tmp_path: Path) -> None:
    write(tmp_path, "db/compose.yml", "services:\n  db:\n    image: postgres:${PG:-15}\n")
    write(tmp_path, "db/.env", "PG=16\n")  # read by default from the include's project dir
    write(tmp_path, "cache.env", "CACHE_TAG='7-alpine'\n")
    write(tmp_path, "cache/compose.yml", "services:\n  cache:\n    image: redis:${CACHE_TAG}\n")
    compose = write(
        tmp_path,
        "compose.yml",
        """\
        include:
          - db/compose.yml
          - path: [cache/compose.yml]
            env_file: cache.env
        services:
          web: {image: nginx}
        """,
    )
    services = load_compose_services([compose], tmp_path, "demo")
    assert [(s.name, s.image, s.compose_file) for s in services] == [
        ("cache", "redis:7-alpine", tmp_path / "cache/compose.yml"),
        ("db", "postgres:16", tmp_path / "db/compose.yml"),
        ("web", "nginx", compose),
    ]


def test_include_path_is_relative_to_the_working_dir(tmp_path: Path) -> None:
    write(tmp_path, "db/compose.yml", "services:\n  db:\n    image: postgres:16\n")
    feature = write(tmp_path, "features/compose.yml", "include: [db/compose.yml]\n")
    assert images(tmp_path, feature) == {"db": "postgres:16"}


def test_include_conflict_with_the_including_file(tmp_path: Path) -> None:
    write(tmp_path, "db.yml", "services:\n  db:\n    image: postgres:16\n")
    compose = write(
        tmp_path, "compose.yml", "include: [db.yml]\nservices:\n  db:\n    image: postgres:15\n"
    )
    assert load_error(tmp_path, compose) == (
        f"couldn't load compose file {compose}: services.db conflicts with imported resource"
    )


def test_included_service_can_be_overridden_by_a_later_file(tmp_path: Path) -> None:
    write(tmp_path, "db.yml", "services:\n  db:\n    image: postgres:16\n")
    compose = write(tmp_path, "compose.yml", "include: [db.yml]\n")
    override = write(tmp_path, "compose-2.yml", "services:\n  db:\n    image: postgres:17\n")
    assert images(tmp_path, compose, override) == {"db": "postgres:17"}


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    compose = write(tmp_path, "compose.yml", "include: [other.yml]\n")
    write(tmp_path, "other.yml", "include: [compose.yml]\n")
    assert "include cycle detected" in load_error(tmp_path, compose)


# --- profiles and dependencies ---------------------------------------------------------------


def test_services_with_profiles_are_disabled(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yml",
        """\
        services:
          web:
            image: nginx
            depends_on:
              debug: {condition: service_started, required: false}
          debug: {image: busybox, profiles: [debug]}
        """,
    )
    assert images(tmp_path, compose) == {"web": "nginx"}


def test_required_dependency_on_a_disabled_service_is_an_error(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yml",
        """\
        services:
          web: {image: nginx, depends_on: [debug]}
          debug: {image: busybox, profiles: [debug]}
        """,
    )
    assert load_error(tmp_path, compose) == (
        f'couldn\'t load compose file {compose}: service "web" depends on undefined service '
        '"debug": invalid compose project'
    )


def test_dependency_cycle_is_an_error(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yml",
        "services:\n  a: {image: x, depends_on: [b]}\n  b: {image: y, links: ['a:alias']}\n",
    )
    assert load_error(tmp_path, compose).endswith("dependency cycle detected: a -> b -> a")


# --- YAML ------------------------------------------------------------------------------------


def test_anchors_merge_keys_and_yaml_1_2_scalars(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "compose.yml",
        """\
        x-base: &base
          image: alpine:3
          restart: unless-stopped
        services:
          one: *base
          two:
            <<: *base
            image: 2024-01-01
            tty: yes
        """,
    )
    assert images(tmp_path, compose) == {"one": "alpine:3", "two": "2024-01-01"}


def test_every_document_of_a_file_is_merged(tmp_path: Path) -> None:
    compose = write(
        tmp_path, "compose.yml", "services:\n  web: {image: a}\n---\nservices:\n  web: {image: b}\n"
    )
    assert images(tmp_path, compose) == {"web": "b"}


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("- web\n", "top-level object must be a mapping"),
        ("services: [web]\n", "services must be a mapping"),
        ("services:\n  web:\n", "services.web must be a mapping"),
        ("services:\n  web: {image: 1.5}\n", "services.web.image must be a string"),
        ("services:\n  web: {image: a}\n  web: {image: b}\n", 'line 3: mapping key "web" already'),
        ("services:\n  web:\n    labels: {80: x}\n    image: a\n", "non-string key in"),
        ("", "empty compose file"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, cause: str) -> None:
    compose = write(tmp_path, "compose.yml", text)
    assert load_error(tmp_path, compose).startswith(
        f"couldn't load compose file {compose}: {cause}"
    )


def test_unclosed_flow_sequence_names_the_place(tmp_path: Path) -> None:
    # libyaml and PyYAML's pure parser word the cause differently; both give the place.
    compose = write(tmp_path, "compose.yml", "services:\n  web: [\n")
    message = load_error(tmp_path, compose)
    assert message.startswith(f"couldn't load compose file {compose}: ")
    assert message.endswith("at line 3, column 1")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "compose.yml"
    with pytest.raises(RequirementsError) as caught:
        load_compose_services([missing], tmp_path, "demo")
    assert str(caught.value) == f"couldn't load compose file {missing}: no such file or directory"
    assert caught.value.path == missing


def test_invalid_project_name_is_an_error(tmp_path: Path) -> None:
    compose = write(tmp_path, "compose.yml", "services:\n  web:\n    image: nginx\n")
    with pytest.raises(RequirementsError, match='invalid project name "Apps/Web"'):
        load_compose_services([compose], tmp_path, "Apps/Web")


# --- The real pallet (tests/pallet_standard.py, used in place) ------------------------------


def test_pallet_feature_file_overrides_image(pallet_standard_dir: Path) -> None:
    package_dir = pallet_standard_dir / "packages/core/apps/planktoscope/docs"
    feature = package_dir / "compose-full-site.yml"
    services = load_compose_services(
        [package_dir / "compose.yml", feature], package_dir, "apps_ps_docs"
    )
    assert services == [
        ComposeService(
            "server",
            "ghcr.io/planktoscope/project-docs:2024.0.0-beta.2@sha256:"
            "ce7db9194d20aeb27f07595f6935e41c300061c94867f63b51fd61881cf9d5b8",
            feature,
        )
    ]


def test_pallet_grafana_features_keep_the_base_image(pallet_standard_dir: Path) -> None:
    package_dir = pallet_standard_dir / "packages/core/apps/grafana"
    files = [
        package_dir / name
        for name in ("compose.yml", "compose-frontend.yml", "compose-cpu-limit.yml")
    ]
    services = load_compose_services(files, package_dir, "apps_grafana")
    assert services == [
        ComposeService(
            "server",
            "docker.io/grafana/grafana-oss:11.3.0@sha256:"
            "a0f881232a6fb71a0554a47d0fe2203b6888fe77f4cefb7ea62bed7eb54e13c3",
            package_dir / "compose.yml",
        )
    ]
