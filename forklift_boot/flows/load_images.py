"""load-img: load what the target lacks from the cache, and make every ref as written resolve."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from forklift_boot.cache import ImageCache
from forklift_boot.errors import CacheError, EngineError, ForkliftBootError
from forklift_boot.faults import checkpoint
from forklift_boot.flows.read_through import Fetched, ReadThrough, read_through
from forklift_boot.images import (
    ByteCounter,
    ImageTarget,
    LoadPlan,
    Wanted,
    find_cached,
    group_by_canonical,
    missing_outcome,
    plan_load,
)
from forklift_boot.refs import ImageRef
from forklift_boot.report import (
    FAILED,
    FROM_CACHE,
    FROM_ENGINE,
    FROM_REGISTRY,
    LOADED,
    MISSING,
    PRESENT,
    TAGGED,
    UNRESOLVED,
    ImageOutcome,
    NoProgress,
    Progress,
    Report,
)
from forklift_boot.requirements import RequiredImage

log = logging.getLogger(__name__)


def load_images(
    required: Sequence[RequiredImage],
    target: ImageTarget,
    cache: ImageCache,
    *,
    thin: bool = True,
    record_digests: bool = True,
    progress: Progress | None = None,
    engine: str = "Docker",
    fetch: ReadThrough | None = None,
) -> Report:
    """Loads what the target lacks (by image ID and by ref as written) from the cache; with
    ``fetch``, first fetches into the cache what is missing (or newer) at the registries."""
    progress = progress or NoProgress()
    report = Report("load", engine, show_sources=fetch is not None)
    outcomes: dict[str, ImageOutcome] = {}
    wanted = group_by_canonical(required)
    fetched = read_through(wanted, target, cache, fetch) if fetch is not None else Fetched()
    with cache.reading() as reader:
        plans: list[LoadPlan] = []
        for item in wanted:
            entry = find_cached(reader, item)
            if entry is None:
                if all(target.resolve(ref) for ref in item.written):
                    outcomes[item.canonical] = item.outcome(PRESENT)
                else:
                    outcomes[item.canonical] = missing_outcome(
                        item,
                        fetched.problems.get(item.canonical, "not in the cache; cache it first"),
                    )
                continue
            try:
                plan = plan_load(reader, entry, item, target.platform)
            except ForkliftBootError as err:
                outcomes[item.canonical] = item.outcome(FAILED, str(err))
                continue
            if _unresolved_refs(target, plan):
                plans.append(plan)
            else:
                outcomes[item.canonical] = item.outcome(PRESENT)
        # Spellings of one image (tag, digest, both) share an image ID: load it once.
        by_image: dict[str, list[LoadPlan]] = {}
        for plan in plans:
            by_image.setdefault(target.identity(plan), []).append(plan)
        to_load = [group for image_id, group in by_image.items() if not target.has_image(image_id)]
        target.ensure_space([group[0] for group in to_load])
        for index, group in enumerate(to_load, start=1):
            merged = _merge_plans(group)
            progress.start_image(index, len(to_load), merged.wanted.canonical, merged.archive_size)
            sent = _ByteCount(progress.add_bytes)
            try:
                target.load(reader, merged, thin=thin, on_bytes=sent)
                checkpoint("image-loaded")
                status, detail = LOADED, ""
            except (EngineError, CacheError) as err:
                log.error("couldn't load %s: %s", merged.wanted.canonical, err)
                status, detail = FAILED, str(err)
            for position, plan in enumerate(group):
                outcomes[plan.wanted.canonical] = plan.wanted.outcome(
                    status, detail, bytes_written=sent.total if position == 0 else 0
                )
        failed = {name for name, outcome in outcomes.items() if outcome.status == FAILED}
        in_target = [plan for plan in plans if plan.wanted.canonical not in failed]
        _make_resolvable(target, in_target, outcomes, record_digests=record_digests)
    for item in wanted:
        outcome = replace(outcomes[item.canonical], source=_source(outcomes[item.canonical]))
        if outcome.source == FROM_CACHE and item.canonical in fetched.from_registry:
            outcome = replace(outcome, source=FROM_REGISTRY)
        report.add(outcome)
        progress.finish_image(outcome)
    return report.finish()


def _source(outcome: ImageOutcome) -> str | None:
    """Where the image in the engine came from: it was there already (perhaps under other
    names), or the cache."""
    if outcome.status in (PRESENT, TAGGED):
        return FROM_ENGINE
    return None if outcome.status == MISSING else FROM_CACHE


def _make_resolvable(
    target: ImageTarget,
    plans: Sequence[LoadPlan],
    outcomes: dict[str, ImageOutcome],
    *,
    record_digests: bool,
) -> None:
    pending = [(plan, ref) for plan in plans for ref in _unresolved_refs(target, plan)]
    reasons = target.make_resolvable(pending, record_digests=record_digests) if pending else {}
    for plan in plans:
        still = _unresolved_refs(target, plan)
        previous = outcomes.get(plan.wanted.canonical)
        if still:
            why = "; ".join(
                f"{ref.written}: {reasons.get(ref.written, 'does not resolve')}" for ref in still
            )
            outcomes[plan.wanted.canonical] = plan.wanted.outcome(UNRESOLVED, why)
        elif previous is None:
            outcomes[plan.wanted.canonical] = plan.wanted.outcome(TAGGED)


class _ByteCount:
    """Counts the bytes that really went to the target, and passes them on to progress."""

    def __init__(self, then: ByteCounter) -> None:
        self.total = 0
        self.then = then

    def __call__(self, count: int) -> None:
        self.total += count
        self.then(count)


def _merge_plans(group: Sequence[LoadPlan]) -> LoadPlan:
    """One plan for cache entries of the same image, answering to all their refs."""
    refs = tuple(ref for plan in group for ref in plan.wanted.refs)
    essential = any(plan.wanted.essential for plan in group)
    return replace(group[0], wanted=Wanted(group[0].wanted.canonical, refs, essential))


def _unresolved_refs(target: ImageTarget, plan: LoadPlan) -> list[ImageRef]:
    return [
        ref for ref in plan.wanted.refs if target.resolve(ref.written) != target.identity(plan, ref)
    ]
