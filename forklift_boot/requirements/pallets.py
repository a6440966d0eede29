"""Pallets: merging import groups from required pallets, and the images of the deployments.

Mirrors Forklift v0.8.0's ``MergeFSPallet`` (``internal/app/forklift/pallets-merging.go`` and
``pallets-imports.go``): the pallet's own files overlay the files that its import groups map in
from required pallets, which are themselves merged first.
"""

from __future__ import annotations

import filecmp
import logging
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.deployments import ImageUse, images_of_deployment
from forklift_boot.requirements.files import (
    get_bool,
    get_mapping,
    get_str,
    get_str_list,
    load_yaml_mapping,
)
from forklift_boot.requirements.import_groups import (
    PALLET_REQS_DIR,
    ImportGroup,
    load_import_group,
    load_import_groups,
    matches_with_children,
)
from forklift_boot.requirements.packages import PACKAGE_FILE, PackageDir, load_package
from forklift_boot.requirements.trees import (
    check_inside,
    has_parent_step,
    package_subdir,
    real_tree,
    refuse_parent_steps,
)
from forklift_boot.requirements.versions import VERSION_LOCK_FILE, load_locked_version

log = logging.getLogger(__name__)

PALLET_FILE = "forklift-pallet.yml"
REPO_REQS_DIR = "requirements/repositories"
DEPLOYMENT_EXT = ".deploy.yml"
FEATURE_EXT = ".feature.yml"


@dataclass(frozen=True)
class Workspace:
    """Where Forklift keeps required pallets and repositories (``<ws>/.cache/forklift``)."""

    workspace_dir: Path

    def pallet_dir(self, pallet_path: str, version: str) -> Path:
        return self._cached("pallets", pallet_path, version)

    def repo_dir(self, repo_path: str, version: str) -> Path:
        return self._cached("repositories", repo_path, version)

    def _cached(self, kind: str, path: str, version: str) -> Path:
        # A version lock's timestamp or commit is pasted into the name as written: `..` in
        # either would lead out of the cache.
        name = f"{path}@{version}"
        if has_parent_step(name) or name.startswith("/"):
            raise RequirementsError(
                f"couldn't find {path}@{version} in the workspace cache: the name leaves "
                f"{self.workspace_dir / '.cache/forklift' / kind}; fix its version lock",
            )
        return self.workspace_dir / ".cache/forklift" / kind / name


@dataclass
class MergedPallet:
    """A pallet's files: its own directory over the files imported from required pallets."""

    root_dir: Path
    pallet_path: str
    imported: dict[str, Path] = field(default_factory=dict)  # relative target -> real file
    # The real directories of this pallet and of every pallet merged into it: every file the
    # pallet leads forklift-boot to read must be inside one of them.
    trees: tuple[Path, ...] = ()

    def __post_init__(self) -> None:
        if not self.trees:
            self.trees = (real_tree(self.root_dir),)

    def real_file(self, rel: str) -> Path | None:
        """Forklift's ``MergeFS.Open``: the pallet's own file first, else the imported one."""
        rel = posixpath.normpath(rel.lstrip("/"))
        own = self.root_dir / rel
        if os.path.lexists(own):  # a FIFO or a symlink loop too: reading it says what it is
            if own.is_dir():
                return None
            check_inside(own, self.trees, f"a file of pallet {self.pallet_path}")
            return own
        return self.imported.get(rel)

    def files(self) -> Iterator[str]:
        """Every file's path relative to the pallet root, the pallet's own files first."""
        own = set()
        for dir_path, dir_names, file_names in os.walk(self.root_dir):
            dir_names[:] = [name for name in dir_names if name != ".git"]
            rel_dir = Path(dir_path).relative_to(self.root_dir).as_posix()
            for name in file_names:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                own.add(rel)
                yield rel
        yield from (rel for rel in self.imported if rel not in own)


class PalletLoader:
    """Loads pallets and merges them with their imports, each required pallet once."""

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._merged: dict[Path, MergedPallet] = {}
        self._merging: list[Path] = []

    def merge(self, root_dir: Path) -> MergedPallet:
        root_dir = real_tree(root_dir)
        if root_dir in self._merged:
            return self._merged[root_dir]
        if root_dir in self._merging:
            chain = " -> ".join(str(p) for p in [*self._merging, root_dir])
            raise RequirementsError(f"couldn't merge pallet: circular pallet requirements: {chain}")
        self._merging.append(root_dir)
        try:
            merged = self._merge(root_dir)
        finally:
            self._merging.pop()
        self._merged[root_dir] = merged
        return merged

    def required_pallet_dir(self, tree: MergedPallet, name: str) -> tuple[str, Path]:
        """The required pallet whose path is ``name`` or a parent of it, from the cache."""
        req_rel, lock_file = _find_requirement(tree, PALLET_REQS_DIR, name, "pallet")
        version = load_locked_version(lock_file.parent)
        pallet_dir = self.workspace.pallet_dir(req_rel, version)
        if not (pallet_dir / PALLET_FILE).is_file():
            raise RequirementsError(
                f"couldn't find required pallet {req_rel}@{version} in the workspace cache "
                f"({pallet_dir}); cache it first, e.g. with `forklift plt cache-plt`",
                pallet_dir,
            )
        return req_rel, pallet_dir

    def _merge(self, root_dir: Path) -> MergedPallet:
        pallet_path = load_pallet_path(root_dir)
        shallow = MergedPallet(root_dir, pallet_path)
        groups = load_import_groups(root_dir)
        if not any(not group.disabled for group in groups):
            return shallow
        for group in groups:
            if group.disabled:
                # Forklift v0.8.0 never calls FilterImportsForEnabled: once any group is
                # enabled, disabled ones are applied too.
                log.warning(
                    "import group %s is disabled, but Forklift v0.8.0 applies it anyway because "
                    "other import groups of pallet %s are enabled",
                    group.name,
                    pallet_path,
                )
        by_pallet: dict[str, tuple[MergedPallet, list[ImportGroup]]] = {}
        for group in groups:
            if (root_dir / "features" / (group.name + FEATURE_EXT)).is_file():
                raise RequirementsError(
                    f"couldn't merge pallet {pallet_path}: import group {group.name} has "
                    "the name of one of the pallet's own features, which Forklift would merge "
                    "endlessly",
                    group.file,
                )
            req_path, req_dir = self.required_pallet_dir(shallow, group.name)
            if req_path not in by_pallet:
                by_pallet[req_path] = (self.merge(req_dir), [])
            by_pallet[req_path][1].append(group)

        imported: dict[str, Path] = {}
        trees = list(shallow.trees)
        for _path, (required, req_groups) in sorted(by_pallet.items()):
            trees += [tree for tree in required.trees if tree not in trees]
            mappings = self._consolidate(req_groups, required)
            for target, source in mappings.items():
                real = required.real_file(source)
                if real is None:
                    continue  # directories are not mapped (Forklift maps files only)
                rel = target.lstrip("/")
                previous = imported.get(rel)
                if previous is not None and not _same_file(previous, real):
                    raise RequirementsError(
                        f"couldn't merge pallet {pallet_path}: {real} and {previous} are both "
                        f"imported to {target} but differ; change the import groups so that only "
                        "one of them is imported",
                        root_dir,
                    )
                imported.setdefault(rel, real)
        return MergedPallet(root_dir, pallet_path, imported, tuple(trees))

    def _consolidate(self, groups: list[ImportGroup], required: MergedPallet) -> dict[str, str]:
        union: dict[str, str] = {}
        origin: dict[str, str] = {}
        for group in groups:
            for target, source in self._evaluate(group, required).items():
                if target in union and union[target] != source:
                    raise RequirementsError(
                        f"couldn't evaluate import group {group.name}: it maps {source} to "
                        f"{target}, but import group {origin[target]} maps {union[target]} there",
                        group.file,
                    )
                union[target] = source
                origin[target] = group.name
        for target in union:
            if target.startswith("/requirements/pallets"):
                raise RequirementsError(
                    f"couldn't evaluate import groups: target {target} is in "
                    "/requirements/pallets, which is not allowed",
                    groups[0].file,
                )
            if posixpath.dirname(target) in ("/", "."):
                raise RequirementsError(
                    f"couldn't evaluate import groups: target {target} is a root-level file, "
                    "which is not allowed",
                    groups[0].file,
                )
        return union

    def _evaluate(self, group: ImportGroup, pallet: MergedPallet) -> dict[str, str]:
        """Forklift's ``ResolvedImport.Evaluate``: target path -> source path in ``pallet``."""
        mappings: dict[str, str] = {}
        for modifier in group.modifiers:
            kind = modifier["type"]
            source, target = modifier["source"], modifier["target"]
            matchers: list[str] = modifier["only-matching-any"]
            if kind == "add":
                files = list(pallet.files())
                for matcher in matchers:
                    pattern = posixpath.join(source, matcher) if matcher else source
                    pattern = pattern.lstrip("/")
                    for rel in files:
                        if matches_with_children(pattern, rel):
                            suffix = _trim_prefix("/" + rel, _clean(posixpath.join("/", source)))
                            mappings[_clean(posixpath.join("/", target, suffix.lstrip("/")))] = (
                                "/" + rel
                            )
            elif kind == "remove":
                for matcher in matchers:
                    pattern = _clean(posixpath.join(target, matcher, "**"))
                    for mapped in [t for t in mappings if matches_with_children(pattern, t)]:
                        del mappings[mapped]
            elif kind in ("add-feature", "remove-feature"):
                feature = self._load_feature(pallet, source, group)
                feature_mappings = self._evaluate(feature, pallet)
                if kind == "add-feature":
                    mappings.update(feature_mappings)
                else:
                    for mapped in feature_mappings:
                        mappings.pop(mapped, None)
            else:
                raise RequirementsError(
                    f"couldn't evaluate import group {group.name}: unknown modifier type {kind} "
                    "(expected add, remove, add-feature or remove-feature)",
                    group.file,
                )
        return mappings

    def _load_feature(self, pallet: MergedPallet, name: str, user: ImportGroup) -> ImportGroup:
        """Forklift's ``FSPallet.LoadFeature``: the pallet's own feature, else a required one."""
        own = pallet.real_file(f"features/{name}{FEATURE_EXT}")
        if own is not None:
            return load_import_group(own, name)
        try:
            req_path, req_dir = self.required_pallet_dir(pallet, name)
        except RequirementsError as err:
            raise RequirementsError(
                f"couldn't load feature {name} used by {user.name}: it is neither in "
                f"{pallet.root_dir / 'features'} nor in a required pallet ({err})",
                user.file,
            ) from err
        # Forklift loads the feature from the required pallet's own (unmerged) files.
        local_name = _trim_prefix(name, f"{req_path}/features/")
        feature_file = req_dir / "features" / (local_name + FEATURE_EXT)
        if has_parent_step(local_name) or not feature_file.is_file():
            raise RequirementsError(
                f"couldn't load feature {name} used by {user.name}: no {feature_file}", user.file
            )
        check_inside(feature_file, [real_tree(req_dir)], f"feature {name} used by {user.name}")
        return load_import_group(feature_file, name)


def load_pallet_path(root_dir: Path) -> str:
    path = root_dir / PALLET_FILE
    if not path.is_file():
        raise RequirementsError(
            f"couldn't load pallet at {root_dir}: no {PALLET_FILE}; "
            "point --pallet at a pallet's root directory",
            path,
        )
    check_inside(path, [real_tree(root_dir)], f"the pallet file of {root_dir}")
    spec = get_mapping(load_yaml_mapping(path, "pallet file"), "pallet", path, "pallet file")
    return get_str(spec, "path", path, "pallet file")


def images_of_pallet(
    root_dir: Path, workspace: Workspace, *, include_disabled: bool, with_file_exports: bool
) -> list[ImageUse]:
    """What ``forklift plt ls-img`` lists for the pallet at ``root_dir``, with provenance."""
    loader = PalletLoader(workspace)
    tree = loader.merge(root_dir)
    uses: list[ImageUse] = []
    for rel in sorted(tree.files()):
        if not (rel.startswith("deployments/") and rel.endswith(DEPLOYMENT_EXT)):
            continue
        name = rel.removeprefix("deployments/").removesuffix(DEPLOYMENT_EXT)
        file = tree.real_file(rel)
        assert file is not None
        what = "deployment file"
        definition = load_yaml_mapping(file, what)
        if get_bool(definition, "disabled", file, what) and not include_disabled:
            continue
        package_path = get_str(definition, "package", file, what)
        features = get_str_list(definition, "features", file, what)
        package_dir = _resolve_package_dir(tree, workspace, package_path, name, file)
        package = load_package(package_dir, package_path)
        uses.extend(
            images_of_deployment(name, package, features, with_file_exports=with_file_exports)
        )
    return uses


def _resolve_package_dir(
    tree: MergedPallet, workspace: Workspace, package_path: str, deployment: str, file: Path
) -> PackageDir:
    if not package_path:
        raise RequirementsError(
            f"couldn't evaluate deployment {deployment}: `package` is missing in {file}", file
        )
    if package_path.startswith("/"):
        # A package inside the pallet itself (Forklift's LoadPkgReq special case). Forklift
        # loads it through the merged pallet's filesystem (MergeFS.Sub), so each of its files
        # is the pallet's own when the pallet has one and the imported one otherwise, and its
        # directory (compose-go's working dir, MergeFS.Path) is inside the pallet's own
        # directory, whether that exists on disk or not.
        subdir = package_subdir(package_path, package_path, file)
        package_file = tree.real_file(f"{subdir}/{PACKAGE_FILE}")
        if package_file is None:
            raise RequirementsError(
                f"couldn't evaluate deployment {deployment}: the pallet has no package "
                f"{package_path} (no {tree.root_dir / subdir / PACKAGE_FILE})",
                file,
            )

        def in_merged_pallet(name: str) -> Path | None:
            return tree.real_file(f"{subdir}/{name}")

        return PackageDir(tree.root_dir / subdir, tree.trees, in_merged_pallet)
    refuse_parent_steps(package_path, file)  # before it picks a requirement by its parents
    try:
        repo_path, lock_file = _find_requirement(tree, REPO_REQS_DIR, package_path, "repository")
    except RequirementsError as err:
        raise RequirementsError(f"couldn't evaluate deployment {deployment}: {err}", file) from err
    version = load_locked_version(lock_file.parent)
    repo_dir = workspace.repo_dir(repo_path, version)
    if not repo_dir.is_dir():
        raise RequirementsError(
            f"couldn't evaluate deployment {deployment}: repository {repo_path}@{version} is not "
            f"in the workspace cache ({repo_dir}); cache it first, e.g. with "
            "`forklift plt cache-repo`, or pass the right --workspace",
            repo_dir,
        )
    subdir = package_subdir(_trim_prefix(package_path, repo_path + "/"), package_path, file)
    # A package from a repository is read from the repository's cache alone: imports never
    # reach it (Forklift's FSRepoCache.LoadFSPkg is a plain directory).
    return PackageDir(repo_dir / subdir, (real_tree(repo_dir),))


def _find_requirement(tree: MergedPallet, reqs_dir: str, path: str, kind: str) -> tuple[str, Path]:
    """Forklift's ``Load*ReqContaining``: the requirement at ``path`` or its nearest parent."""
    candidate = path.strip("/")
    while candidate not in ("", "."):
        lock = tree.real_file(f"{reqs_dir}/{candidate}/{VERSION_LOCK_FILE}")
        if lock is not None:
            return candidate, lock
        candidate = posixpath.dirname(candidate)
    raise RequirementsError(
        f"no {kind} requirement in {tree.root_dir / reqs_dir} provides {path}; "
        f"add one, e.g. with `forklift plt add-{'repo' if kind == 'repository' else 'plt'}`",
        tree.root_dir / reqs_dir,
    )


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:  # a symlink loop: not the same, and reading it will say why
        return False
    return (sa.st_mode & 0o777) == (sb.st_mode & 0o777) and filecmp.cmp(a, b, shallow=False)


def _trim_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def _clean(path: str) -> str:
    return posixpath.normpath(path) if path else "."
