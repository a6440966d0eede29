"""The layers of docs/architecture.md ("Layers"): every import of every module, one way only.

Each module under forklift_boot/ is parsed with ``ast``; every import counts, at any depth
(inside functions, ``if TYPE_CHECKING:`` blocks, relative imports, ``importlib.import_module``
with a literal name). A forbidden arrow fails with ``importer -> imported`` and the rule.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# The source tree next to the tests, whatever copy of the package Python would import.
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "forklift_boot"
MAX_TOP_LEVEL_MODULES = 10


@dataclass(frozen=True)
class Module:
    name: str  # dotted: forklift_boot.stores.docker.engine
    source: str
    is_package: bool  # an __init__.py


_plain = Module("", "", is_package=False)  # stands in for a module the package lacks


def in_package(*packages: str) -> Callable[[str], bool]:
    """Whether a dotted name is one of ``packages`` or inside one."""
    return lambda name: any(name == p or name.startswith(p + ".") for p in packages)


def _fb(*names: str) -> tuple[str, ...]:
    return tuple(f"forklift_boot.{name}" for name in names)


def outside(*packages: str) -> Callable[[str], bool]:
    """Whether a dotted name is none of ``packages`` and inside none of them."""
    inside = in_package(*packages)
    return lambda name: not inside(name)


def other_modules(*packages: str) -> Callable[[str], bool]:
    """forklift_boot's modules outside ``packages``, the package's own ``__init__`` excepted."""
    inside = in_package(*packages)
    return lambda name: name.startswith("forklift_boot.") and not inside(name)


@dataclass(frozen=True)
class Rule:
    importers: Callable[[str], bool]
    forbidden: Callable[[str], bool]
    why: str


RULES = (
    Rule(
        in_package(*_fb("stores")),
        in_package(*_fb("flows", "exchange", "cli")),
        "backends (stores/) never import flows, exchange or cli",
    ),
    Rule(
        in_package(*_fb("flows")),
        other_modules(
            *_fb(
                "flows",
                "images",
                "cache",
                "report",
                "refs",
                "platforms",
                "faults",
                "errors",
                "requirements",
            )
        ),
        "flows see backends only through the protocols in images.py; they import only images, "
        "cache, report, refs, platforms, faults, errors and requirements",
    ),
    Rule(
        in_package(*_fb("cache")),
        in_package(*_fb("images", "archive", "stores", "flows", "exchange", "cli", "requirements")),
        "cache/ is below the vocabulary, archive, backends, flows, exchange, cli and requirements",
    ),
    Rule(
        in_package(*_fb("archive")),
        in_package(*_fb("stores", "flows", "exchange", "cli")),
        "archive/ never imports backends, flows, exchange or cli",
    ),
    Rule(
        outside(*_fb("cli", "__main__")),
        in_package(*_fb("cli")),
        "only forklift_boot.__main__ imports cli",
    ),
    Rule(
        outside(*_fb("cli", "flows")),
        in_package(*_fb("flows")),
        "only cli composes the flows",
    ),
    Rule(
        outside(*_fb("cli", "exchange")),
        in_package(*_fb("exchange")),
        "only cli uses the exchange commands",
    ),
    Rule(
        in_package(*_fb("errors", "faults", "refs", "platforms", "config")),
        other_modules(*_fb("errors", "faults", "refs", "platforms", "config")),
        "errors, faults, refs, platforms and config are the bottom layer: they import only "
        "each other",
    ),
    # Each third-party library belongs to one package.
    Rule(
        outside(*_fb("stores.docker")),
        in_package("docker"),
        "the docker SDK belongs to stores/docker",
    ),
    Rule(
        outside(*_fb("stores.registry", "stores.docker")),
        in_package("requests"),
        "requests belongs to stores/registry (stores/docker may catch the SDK's requests errors)",
    ),
    Rule(
        outside(*_fb("systemd")),
        in_package("pystemd"),
        "pystemd belongs to systemd.py",
    ),
    Rule(
        outside(*_fb("requirements")),
        in_package("yaml"),
        "PyYAML belongs to requirements/",
    ),
    Rule(
        outside(*_fb("config")),
        in_package("platformdirs"),
        "platformdirs belongs to config.py",
    ),
)


def package_modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("forklift_boot", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(name, path.read_text(encoding="utf-8"), is_package)
    return modules


def imports_of(module: Module, known: Mapping[str, Module]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the module, at any depth.

    ``from package import name`` counts as importing ``package.name`` when that is a module.
    """
    for node in _nodes(module.source, module.name):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node.module, node.level)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                yield (child if child in known else base), node.lineno
        elif (
            isinstance(node, ast.Call)
            and _called_name(node.func) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.args[0].value, node.lineno


@functools.cache
def _nodes(source: str, filename: str) -> list[ast.AST]:
    return list(ast.walk(ast.parse(source, filename)))


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _absolute(module: Module, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def forbidden_arrows(modules: Mapping[str, Module]) -> list[str]:
    """``importer -> imported (line N): why`` per forbidden import, every rule it breaks."""
    found = []
    for module in modules.values():
        for imported, line in imports_of(module, modules):
            broken = [
                rule.why
                for rule in RULES
                if rule.importers(module.name) and rule.forbidden(imported)
            ]
            if broken:
                found.append(f"{module.name} -> {imported} (line {line}): {'; '.join(broken)}")
    return found


def test_no_arrow_points_the_wrong_way() -> None:
    arrows = forbidden_arrows(package_modules())
    assert not arrows, "forbidden imports:\n" + "\n".join(arrows)


def test_few_top_level_modules() -> None:
    top_level = sorted(
        path.name
        for path in PACKAGE_DIR.glob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    )
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, (
        f"forklift_boot/ has {len(top_level)} top-level modules ({', '.join(top_level)}); "
        f"at most {MAX_TOP_LEVEL_MODULES}: put new ones in a package"
    )


# The check itself: each rule fires on a forbidden arrow, written the ways imports are written.


@pytest.mark.parametrize(
    ("importer", "source", "arrow"),
    [
        (
            "forklift_boot.stores.docker.target",
            "from forklift_boot.flows import FallbackSource\n",
            "forklift_boot.stores.docker.target -> forklift_boot.flows (line 1)",
        ),
        (
            "forklift_boot.stores.registry.source",
            "def f():\n    from forklift_boot.exchange import push\n",
            "forklift_boot.stores.registry.source -> forklift_boot.exchange.push (line 2)",
        ),
        (
            "forklift_boot.stores.containerd.ctr",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ...cli import main\n",
            "forklift_boot.stores.containerd.ctr -> forklift_boot.cli (line 3)",
        ),
        (
            "forklift_boot.flows.cache_images",
            "from forklift_boot.stores.docker.source import DockerSource\n",
            "forklift_boot.flows.cache_images -> forklift_boot.stores.docker.source (line 1)",
        ),
        (
            "forklift_boot.flows.load_images",
            "import forklift_boot.archive\n",
            "forklift_boot.flows.load_images -> forklift_boot.archive (line 1)",
        ),
        (
            "forklift_boot.cache.writer",
            "from .. import images\n",
            "forklift_boot.cache.writer -> forklift_boot.images (line 1)",
        ),
        (
            "forklift_boot.cache",
            "from forklift_boot.requirements import RequiredImage\n",
            "forklift_boot.cache -> forklift_boot.requirements (line 1)",
        ),
        (
            "forklift_boot.archive.oci_layout",
            "from forklift_boot.stores.containerd.ctr import Ctr\n",
            "forklift_boot.archive.oci_layout -> forklift_boot.stores.containerd.ctr (line 1)",
        ),
        (
            "forklift_boot.images",
            "from forklift_boot import cli\n",
            "forklift_boot.images -> forklift_boot.cli (line 1)",
        ),
        (
            "forklift_boot.report",
            "import importlib\nimportlib.import_module('forklift_boot.flows')\n",
            "forklift_boot.report -> forklift_boot.flows (line 2)",
        ),
        (
            "forklift_boot.stores.registry.push",
            "from forklift_boot.exchange.copy import copy_images\n",
            "forklift_boot.stores.registry.push -> forklift_boot.exchange.copy (line 1)",
        ),
        (
            "forklift_boot.refs",
            "from forklift_boot.cache import Descriptor\n",
            "forklift_boot.refs -> forklift_boot.cache (line 1)",
        ),
        (
            "forklift_boot.exchange.serve",
            "import docker.errors\n",
            "forklift_boot.exchange.serve -> docker.errors (line 1)",
        ),
        (
            "forklift_boot.stores.containerd.ctr",
            "import requests\n",
            "forklift_boot.stores.containerd.ctr -> requests (line 1)",
        ),
        (
            "forklift_boot.stores.docker.daemon",
            "from pystemd.systemd1 import Unit\n",
            "forklift_boot.stores.docker.daemon -> pystemd.systemd1 (line 1)",
        ),
        (
            "forklift_boot.cli.commands",
            "import yaml\n",
            "forklift_boot.cli.commands -> yaml (line 1)",
        ),
        (
            "forklift_boot.cli.output",
            "import platformdirs\n",
            "forklift_boot.cli.output -> platformdirs (line 1)",
        ),
    ],
)
def test_the_check_names_each_forbidden_arrow(importer: str, source: str, arrow: str) -> None:
    modules = package_modules()
    modules[importer] = Module(importer, source, modules.get(importer, _plain).is_package)
    found = [line for line in forbidden_arrows(modules) if line.startswith(f"{importer} ->")]
    assert [line.split(":")[0] for line in found] == [arrow]


@pytest.mark.parametrize(
    ("importer", "source"),
    [
        ("forklift_boot.stores.docker.engine", "import docker\nimport requests\n"),
        ("forklift_boot.stores.registry.client", "import requests\n"),
        ("forklift_boot.stores.docker.target", "from forklift_boot.systemd import Systemd\n"),
        ("forklift_boot.flows.load_images", "from forklift_boot.images import plan_load\n"),
        ("forklift_boot.archive", "from forklift_boot.images import ByteCounter\n"),
        ("forklift_boot.cli.commands", "from forklift_boot.flows import cache_images\n"),
        ("forklift_boot.exchange.push", "from forklift_boot.stores.registry import push\n"),
        ("forklift_boot.requirements.files", "import yaml\n"),
        ("forklift_boot.systemd", "from pystemd.daemon import notify\n"),
        ("forklift_boot.__main__", "from forklift_boot.cli import main\n"),
    ],
)
def test_the_check_allows_arrows_that_point_down(importer: str, source: str) -> None:
    modules = package_modules()
    modules[importer] = Module(importer, source, modules.get(importer, _plain).is_package)
    assert [line for line in forbidden_arrows(modules) if line.startswith(f"{importer} ->")] == []
