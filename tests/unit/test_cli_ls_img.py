"""The ls-img command line: sources, flags, output and exit codes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from forklift_boot import cli
from tests.treebuilder import PALLET_FILE, package, under, write_tree
from tests.unit.test_bundles_and_stages import STORE, _stage_store

Capture = pytest.CaptureFixture[str]


def run(capsys: Capture, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    code = cli.main(list(argv), env=env if env is not None else {"HOME": "/nonexistent"})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_stage_store_is_the_default_source(capsys: Capture, tmp_path: Path) -> None:
    store = _stage_store(tmp_path / "stages", STORE)
    code, out, err = run(capsys, "ls-img", env={"FORKLIFT_STAGE_STORE": str(store)})
    assert (code, err) == (0, "")
    assert out.splitlines() == ["b1:1", "b3:1", "b4:1", "b5:1", "common:1"]


@pytest.mark.parametrize("position", ["before", "after"])
def test_global_flags_before_or_after_the_command(
    capsys: Capture, tmp_path: Path, position: str
) -> None:
    store = _stage_store(tmp_path / "stages", STORE)
    flags = ["--stage-store", str(store)]
    argv = [*flags, "ls-img", "--bundles", "next"]
    if position == "after":
        argv = ["ls-img", "--bundles", "next", *flags]
    code, out, _ = run(capsys, *argv, env={"FORKLIFT_STAGE_STORE": "/nonexistent"})
    assert (code, out) == (0, "b5:1\ncommon:1\n")


def test_alias_list_images_and_refs_as_arguments(capsys: Capture) -> None:
    code, out, _ = run(capsys, "list-images", "nginx:1.27", "busybox", "nginx:1.27")
    assert (code, out) == (0, "busybox\nnginx:1.27\n")


def test_images_file_from_stdin(capsys: Capture, monkeypatch: pytest.MonkeyPatch) -> None:
    # What `forklift plt ls-img` prints, including the empty line of a build-only service.
    monkeypatch.setattr("sys.stdin", io.StringIO("b:2\n\na:1\n# a comment\n"))
    code, out, _ = run(capsys, "ls-img", "--images-file", "-")
    assert (code, out) == (0, "a:1\nb:2\n")


def test_json_output(capsys: Capture) -> None:
    code, out, _ = run(capsys, "ls-img", "--json", "nginx:1.27@sha256:" + "a" * 64)
    assert code == 0
    assert json.loads(out) == [
        {
            "ref": "nginx:1.27@sha256:" + "a" * 64,
            "canonical": "docker.io/library/nginx:1.27@sha256:" + "a" * 64,
            "name": "docker.io/library/nginx",
            "tag": "1.27",
            "digest": "sha256:" + "a" * 64,
            "deployments": [],
            "bundles": [],
        }
    ]


def test_json_false_prints_plain_lines(capsys: Capture) -> None:
    assert run(capsys, "ls-img", "--json=false", "a:1")[:2] == (0, "a:1\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["ls-img", "--pallet", "p", "--bundle", "b"],
        ["ls-img", "--pallet", "p", "nginx:1"],
        ["ls-img", "--images-file", "f", "nginx:1"],
        ["ls-img", "--bundles", "next", "--bundle", "b"],
        ["ls-img", "--include-disabled", "nginx:1"],
        ["ls-img", "--json=maybe"],
        ["ls-img", "--no-such-flag"],
    ],
)
def test_usage_errors_exit_2(capsys: Capture, argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert (code, out) == (2, "")
    assert err.strip()


def test_bad_ref_argument_is_one_line_exit_1(capsys: Capture) -> None:
    code, out, err = run(capsys, "ls-img", "Nginx:1")
    assert (code, out) == (1, "")
    assert err == (
        "Error: couldn't parse image reference in the command line: "
        'invalid image reference "Nginx:1": repository name must be lowercase\n'
    )


def _pallet_with(tmp_path: Path, compose: str) -> Path:
    return write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/apps/web.deploy.yml": "package: /packages/web\n",
            "packages/web/forklift-package.yml": "deployment:\n  compose-files: [compose.yml]\n",
            "packages/web/compose.yml": compose,
        },
    )


@pytest.mark.parametrize(
    ("compose", "expected"),
    [
        ("services:\n  app:\n    image: [unclosed\n", "compose.yml"),
        ("services:\n  app:\n    image: Bad:Ref\n", "service app of deployment apps/web"),
        (
            "services:\n  app:\n    image: x:1\n    environment:\n      A: ${X:?needs X}\n",
            "error while interpolating services.app.environment.A: required variable is missing",
        ),
    ],
)
def test_bad_pallet_input_is_one_line_exit_1(
    capsys: Capture, tmp_path: Path, compose: str, expected: str
) -> None:
    pallet = _pallet_with(tmp_path, compose)
    code, out, err = run(capsys, "ls-img", "--pallet", str(pallet), "--ws", str(tmp_path))
    assert (code, out) == (1, "")
    assert err.startswith("Error: couldn't ")
    assert expected in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_malformed_deployment_yaml_names_the_file(capsys: Capture, tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/web.deploy.yml": "package: /packages/web\n  features: [a\n",
        },
    )
    code, _, err = run(capsys, "ls-img", "--pallet", str(pallet), "--ws", str(tmp_path))
    assert code == 1
    assert f"couldn't parse deployment file {pallet}/deployments/web.deploy.yml" in err
    assert "line 2" in err


def test_build_only_service_is_left_out_with_a_warning(capsys: Capture, tmp_path: Path) -> None:
    compose = "services:\n  built:\n    build: .\n  pulled:\n    image: x:1\n"
    pallet = _pallet_with(tmp_path, compose)
    code, out, err = run(capsys, "ls-img", "--pallet", str(pallet), "--ws", str(tmp_path))
    assert (code, out) == (0, "x:1\n")
    assert err == (
        "Warning: deployment apps/web: service built has `build:` but no `image:`; "
        "Forklift never builds, so it is left out\n"
    )


def test_journald_gets_syslog_priorities(capsys: Capture, tmp_path: Path) -> None:
    compose = "services:\n  built:\n    build: .\n"
    pallet = _pallet_with(tmp_path, compose)
    env = {"HOME": str(tmp_path), "JOURNAL_STREAM": "8:1234"}
    code, _, err = run(capsys, "ls-img", "--pallet", str(pallet), env=env)
    assert code == 0
    assert err.startswith("<4>deployment apps/web: service built")


def test_name_only_ref_printed_as_written(capsys: Capture, tmp_path: Path) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            "deployments/a.deploy.yml": "package: /packages/a\n",
            **under("packages/a", package("library/redis")),
        },
    )
    code, out, _ = run(capsys, "ls-img", "--pallet", str(pallet), "--ws", str(tmp_path))
    assert (code, out) == (0, "library/redis\n")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"deployments/a.deploy.yml": "package: /packages/a\nfeatures: [nope]\n"},
            "deployment a: unrecognized feature flags ['nope']",
        ),
        ({"deployments/a.deploy.yml": "package: /packages/gone\n"}, "no package /packages/gone"),
        ({"deployments/a.deploy.yml": "package: [not, a, string]\n"}, "`package` must be"),
    ],
)
def test_bad_pallet_files_are_one_line_exit_1(
    capsys: Capture, tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    pallet = write_tree(
        tmp_path / "p",
        {
            "forklift-pallet.yml": PALLET_FILE.format(name="p"),
            **under("packages/a", package("a:1", {"extra": "b:1"})),
            **files,
        },
    )
    code, out, err = run(capsys, "ls-img", "--pallet", str(pallet), "--ws", str(tmp_path))
    assert (code, out) == (1, "")
    assert expected in err
    assert len(err.splitlines()) == 1


def test_empty_stage_store_is_one_line_exit_1(capsys: Capture, tmp_path: Path) -> None:
    write_tree(tmp_path, {"forklift-stage-store.yml": "forklift-version: v0.7.0\n"})
    code, out, err = run(capsys, "ls-img", "--stage-store", str(tmp_path))
    assert (code, out) == (1, "")
    assert err == (
        f"Error: the stage store {tmp_path} has no staged bundle to apply or fall back to; "
        "stage a pallet first, e.g. with `forklift plt stage`\n"
    )


def test_missing_images_file(capsys: Capture, tmp_path: Path) -> None:
    code, _, err = run(capsys, "ls-img", "--images-file", str(tmp_path / "nope"))
    assert code == 2
    assert "couldn't read images file" in err
