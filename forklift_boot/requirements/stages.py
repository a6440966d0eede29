"""Forklift's stage store: which staged bundles a device may apply or fall back to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklift_boot.errors import RequirementsError
from forklift_boot.requirements.files import get_bool, get_mapping, load_yaml_mapping

STAGE_STORE_FILE = "forklift-stage-store.yml"
FALLBACK_NAMES = ("next", "current", "rollback")  # plus every user-assigned name
_WHAT = "stage store manifest"


@dataclass(frozen=True)
class StagedBundle:
    index: int
    names: tuple[str, ...]  # every name that points at it: next, current, rollback, user names
    bundle_dir: Path

    @property
    def label(self) -> str:
        return f"{self.index} ({', '.join(self.names)})" if self.names else str(self.index)


@dataclass(frozen=True)
class StageStore:
    store_dir: Path
    next_index: int  # 0: none
    next_failed: bool
    history: tuple[int, ...]
    names: dict[str, int]

    @property
    def current_index(self) -> int:
        return self.history[-1] if self.history else 0

    @property
    def rollback_index(self) -> int:
        return self.history[-2] if len(self.history) >= 2 else 0

    @property
    def applied_index(self) -> int:
        """What ``forklift stage apply`` applies: next, or current once next has failed."""
        if self.next_index and not self.next_failed:
            return self.next_index
        return self.current_index or self.next_index

    def index_of(self, selector: str) -> int:
        """A special name, a user-assigned name, or a bundle index; 0 when it names nothing."""
        special = {
            "next": self.next_index,
            "current": self.current_index,
            "rollback": self.rollback_index,
            "pending": self.next_index if self.next_index != self.current_index else 0,
        }
        if selector in special:
            return special[selector]
        if selector in self.names:
            return self.names[selector]
        if selector.isdigit() and int(selector) > 0:
            return int(selector)
        raise RequirementsError(
            f"couldn't find a bundle named {selector} in the stage store {self.store_dir}; "
            f"known names: {', '.join(sorted([*special, *self.names]))}, or a bundle index",
            self.store_dir / STAGE_STORE_FILE,
        )

    def select(self, selectors: Sequence[str] | None) -> list[StagedBundle]:
        """The bundles that ``selectors`` name; by default every one a device may fall back to."""
        if selectors is None:
            selectors = [*FALLBACK_NAMES, *sorted(self.names)]
            explicit = False
        else:
            explicit = True
        chosen: dict[int, list[str]] = {}
        for selector in selectors:
            index = self.index_of(selector)
            if index == 0:
                if explicit:
                    raise RequirementsError(
                        f"the stage store {self.store_dir} has no `{selector}` bundle; "
                        "stage a pallet first, e.g. with `forklift plt stage`",
                        self.store_dir / STAGE_STORE_FILE,
                    )
                continue
            chosen.setdefault(index, [])
            if selector not in chosen[index]:
                chosen[index].append(selector)
        if not chosen:
            raise RequirementsError(
                f"the stage store {self.store_dir} has no staged bundle to apply or fall back to; "
                "stage a pallet first, e.g. with `forklift plt stage`",
                self.store_dir / STAGE_STORE_FILE,
            )
        bundles = []
        for index in sorted(chosen):
            bundle_dir = self.store_dir / str(index)
            if not bundle_dir.is_dir():
                raise RequirementsError(
                    f"couldn't find bundle {index} ({', '.join(chosen[index])}) in the stage "
                    f"store: {bundle_dir} is missing; re-stage the pallet or fix "
                    f"{STAGE_STORE_FILE}",
                    bundle_dir,
                )
            bundles.append(StagedBundle(index, tuple(chosen[index]), bundle_dir))
        return bundles


def load_stage_store(store_dir: Path) -> StageStore:
    path = store_dir / STAGE_STORE_FILE
    if not store_dir.is_dir():
        raise RequirementsError(
            f"couldn't find the stage store {store_dir}; stage a pallet first "
            "(`forklift plt stage`), or pass --stage-store, --bundle, --pallet or image refs",
            store_dir,
        )
    if not path.is_file():
        raise RequirementsError(
            f"couldn't load the stage store {store_dir}: no {STAGE_STORE_FILE}; "
            "stage a pallet first, e.g. with `forklift plt stage`",
            path,
        )
    manifest = load_yaml_mapping(path, _WHAT)
    staged = get_mapping(manifest, "staged", path, _WHAT)
    names = {
        str(name): _index(value, f"staged.names.{name}", path)
        for name, value in get_mapping(staged, "names", path, _WHAT).items()
    }
    history = staged.get("history") or []
    if not isinstance(history, list):
        raise RequirementsError(f"couldn't parse {_WHAT} {path}: `staged.history` must be a list")
    return StageStore(
        store_dir=store_dir,
        next_index=_index(staged.get("next"), "staged.next", path),
        next_failed=get_bool(staged, "next-failed", path, _WHAT),
        history=tuple(_index(item, "staged.history", path) for item in history),
        names=names,
    )


def _index(value: Any, where: str, path: Path) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequirementsError(
            f"couldn't parse {_WHAT} {path}: `{where}` must be a bundle index (a whole number)",
            path,
        )
    return value
