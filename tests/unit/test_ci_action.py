"""The GitHub Actions composite action (action.yml) and the script it runs (scripts/ci/fill-os-cache).

GitHub does not run here, so the action is checked by its structure: every input the steps
use is declared and every declared input is used, every step output it reads is one that
its step writes, the script it calls exists, is executable and accepts every option the steps
pass, and the shell of its steps and the script pass shellcheck. tests/integration/
test_ci_recipe.py runs the steps' shell as GitHub would, against a loopback registry.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_DIR, require_component

ACTION = REPO_DIR / "action.yml"
SCRIPT_PATH = "scripts/ci/fill-os-cache"
# What actions/cache/restore@v4 sets (its action.yml).
RESTORE_OUTPUTS = {"cache-hit", "cache-primary-key", "cache-matched-key"}
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def load_action() -> dict[str, Any]:
    document = yaml.safe_load(ACTION.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def strings(value: Any) -> Iterator[str]:
    """Every string in a YAML document, keys excluded."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def steps() -> list[dict[str, Any]]:
    found = load_action()["runs"]["steps"]
    assert isinstance(found, list)
    return found


def emitted_outputs() -> set[str]:
    """The key=value names the script writes to $GITHUB_OUTPUT."""
    return set(re.findall(r"^\s*emit ([a-z-]+) ", (REPO_DIR / SCRIPT_PATH).read_text(), re.M))


def script_options() -> set[str]:
    result = subprocess.run(
        [str(REPO_DIR / SCRIPT_PATH), "--help"], capture_output=True, text=True, check=True
    )
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", result.stdout))


def test_a_composite_action_with_a_name_and_description() -> None:
    action = load_action()
    assert action["runs"]["using"] == "composite"
    assert action["name"]
    assert action["description"]
    assert set(action) <= {"name", "description", "author", "branding", "inputs", "outputs", "runs"}


def test_every_input_is_declared_used_and_described() -> None:
    action = load_action()
    declared = set(action["inputs"])
    used = set()
    for text in strings(action["runs"]):
        for expression in EXPRESSION.findall(text):
            used |= set(re.findall(r"\binputs\.([A-Za-z0-9_-]+)", expression))
    assert used == declared
    assert {"pallet", "commit", "platform", "rootfs", "cache-dir", "registry-mirror"} <= declared
    assert "source" in declared
    for name, spec in action["inputs"].items():
        assert spec["description"], name
        # A required input has no default; every optional one has one, so an expression
        # never sees an undefined input.
        assert ("default" in spec) != bool(spec.get("required")), name


def test_inputs_reach_the_shell_through_the_environment_only() -> None:
    # ${{ }} pasted into a run: block is shell code injection (GitHub's security hardening guide).
    for step in steps():
        if "run" in step:
            assert not EXPRESSION.search(step["run"]), step["id"]


def test_every_step_output_read_is_one_its_step_writes() -> None:
    action = load_action()
    written: dict[str, set[str]] = {}
    for step in steps():
        texts = list(strings({k: v for k, v in step.items() if k != "id"}))
        for text in texts:
            for step_id, output in re.findall(
                r"steps\.([A-Za-z0-9_-]+)\.outputs\.([A-Za-z0-9_-]+)", text
            ):
                # Only from a step that ran before this one.
                assert step_id in written, (step.get("id"), step_id)
                assert output in written[step_id], (step_id, output)
        if "id" in step:
            if "run" in step:
                written[step["id"]] = emitted_outputs()
            else:
                assert step["uses"].startswith("actions/cache/restore@")
                written[step["id"]] = RESTORE_OUTPUTS
    for name, spec in action["outputs"].items():
        match = re.fullmatch(r"\$\{\{ steps\.([a-z]+)\.outputs\.([a-z-]+) \}\}", spec["value"])
        assert match, name
        assert match[2] in written[match[1]], name
        assert spec["description"], name


def test_steps_name_their_shell_and_pin_the_actions_they_use() -> None:
    for step in steps():
        assert ("run" in step) != ("uses" in step), step
        if "run" in step:
            assert step["shell"] == "bash"
        else:
            assert re.fullmatch(r"actions/cache/(restore|save)@v\d+", step["uses"]), step


def test_the_cache_is_keyed_by_the_scripts_key_and_saved_only_on_a_miss() -> None:
    by_use = {step["uses"].split("@")[0]: step for step in steps() if "uses" in step}
    restore, save = by_use["actions/cache/restore"], by_use["actions/cache/save"]
    assert restore["with"] == {
        "path": "${{ steps.key.outputs.cache-dir }}",
        "key": "${{ steps.key.outputs.key }}",
        "restore-keys": "${{ steps.key.outputs.restore-prefix }}",
    }
    assert save["with"] == {"path": restore["with"]["path"], "key": restore["with"]["key"]}
    assert save["if"] == "steps.restore.outputs.cache-hit != 'true'"
    order = [step.get("id") or step["uses"] for step in steps()]
    assert order == ["key", "restore", "fill", save["uses"]]


def test_the_script_it_calls_exists_is_executable_and_takes_every_option_passed() -> None:
    options = script_options()
    calls = 0
    for step in steps():
        if "run" not in step:
            continue
        for path in re.findall(r'"\$GITHUB_ACTION_PATH/([^"]+)"', step["run"]):
            calls += 1
            # action.yml is at the top of the repository: $GITHUB_ACTION_PATH is its root.
            assert path == SCRIPT_PATH
            assert (REPO_DIR / path).is_file()
            assert os.access(REPO_DIR / path, os.X_OK)
        passed = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", step["run"]))
        assert passed <= options, passed - options
    assert calls == 2


def test_the_scripts_key_outputs_are_what_the_action_reads() -> None:
    assert emitted_outputs() == {"key", "restore-prefix", "cache-dir", "pallet-commit", "images"}


@pytest.fixture
def shellcheck(request: pytest.FixtureRequest) -> str:
    path = shutil.which("shellcheck")
    if path is None:
        require_component(request.config, "needs shellcheck (apt-get install shellcheck)")
    assert path is not None
    return path


def test_shellcheck_passes_on_the_script(shellcheck: str) -> None:
    result = subprocess.run(
        [shellcheck, str(REPO_DIR / SCRIPT_PATH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_shellcheck_passes_on_the_steps(shellcheck: str, tmp_path: Path) -> None:
    for step in steps():
        if "run" not in step:
            continue
        script = tmp_path / f"{step['id']}.sh"
        # The environment the step sets, as shellcheck sees assignments.
        env = "".join(f"{name}=${{{name}:-}}\n" for name in step.get("env", {}))
        script.write_text(f"#!/usr/bin/env bash\nset -euo pipefail\n{env}{step['run']}")
        result = subprocess.run(
            [shellcheck, str(script)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout
