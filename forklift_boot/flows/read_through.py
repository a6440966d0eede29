"""load-img's read-through: asking registries what is missing or newer, and fetching it into the
cache before the load, so that the cache stays the one place the engine's images come from."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from forklift_boot.cache import CachedImage, ImageCache
from forklift_boot.errors import RegistryError, RegistryUnreachableError
from forklift_boot.flows.cache_images import cache_wanted
from forklift_boot.images import ImageSource, ImageTarget, TagLookup, Wanted, find_cached
from forklift_boot.report import CACHED, NoProgress, Progress

log = logging.getLogger(__name__)

FETCH_NEVER, FETCH_MISSING, FETCH_NEWER = "never", "missing", "newer"
FETCH_MODES = (FETCH_NEVER, FETCH_MISSING, FETCH_NEWER)


@dataclass
class ReadThrough:
    """How load-img reaches past the cache: ``missing`` fetches what neither the engine nor
    the cache has; ``newer`` also every cached tag whose registry now serves another image."""

    mode: str
    source: ImageSource  # fetches into the cache (the registries)
    lookup: TagLookup  # what a ref names at its registry now, with a bounded wait
    progress: Progress = field(default_factory=NoProgress)  # of the fetch
    on_status: Callable[[str], None] = lambda text: None  # systemd's STATUS= while asking
    compress: str = "gzip"  # unused by registries, which keep blobs as served


@dataclass
class Fetched:
    """What the read-through did: the images it fetched into the cache, and why the others
    that the cache lacks couldn't be fetched (by canonical name)."""

    from_registry: set[str] = field(default_factory=set)
    problems: dict[str, str] = field(default_factory=dict)


def read_through(
    wanted: Sequence[Wanted], target: ImageTarget, cache: ImageCache, fetch: ReadThrough
) -> Fetched:
    """Asks the registries about the wanted images that need it and fetches into the cache
    what is missing (or newer). Refs pinned by digest that the cache has are never asked
    about. No lock on the cache is held while a registry is asked; fetching takes the cache
    flow's own."""
    result = Fetched()
    with cache.reading() as reader:
        entries = {item.canonical: find_cached(reader, item) for item in wanted}
    candidates: list[tuple[Wanted, CachedImage | None]] = []
    for item in wanted:
        entry = entries[item.canonical]
        if entry is None:
            if not all(target.resolve(ref) for ref in item.written):
                candidates.append((item, None))
        elif fetch.mode == FETCH_NEWER and item.refs[0].digest is None:
            candidates.append((item, entry))
    to_fetch: list[Wanted] = []
    refresh: set[str] = set()
    unreachable: dict[str, RegistryUnreachableError] = {}
    for number, (item, entry) in enumerate(candidates, start=1):
        fetch.on_status(f"asking registries {number}/{len(candidates)}: {item.written[0]}")
        try:
            digest = fetch.lookup.current_digest(item)
        except RegistryUnreachableError as err:
            unreachable[item.canonical] = err
            if entry is None:
                result.problems[item.canonical] = f"not in the cache, and {err}"
            continue
        except RegistryError as err:
            if entry is None:
                result.problems[item.canonical] = f"not in the cache, and {err}"
            else:
                log.warning("%s; loading %s as cached", err, item.written[0])
            continue
        if digest is None:
            if entry is None:
                result.problems[item.canonical] = (
                    f"neither {target.description}, the cache nor {fetch.lookup.description} has it"
                )
            else:
                log.warning(
                    "%s no longer has %s; loading it as cached",
                    fetch.lookup.description,
                    item.written[0],
                )
            continue
        if entry is not None:
            if digest in (entry.registry_digest, entry.descriptor.digest):
                continue  # the cache has what the tag names now
            log.info("%s has changed at its registry; fetching it", item.written[0])
            refresh.add(item.canonical)
        to_fetch.append(item)
    if unreachable:
        _warn_unreachable(unreachable, wanted)
    if to_fetch:
        report = cache_wanted(
            to_fetch,
            fetch.source,
            cache,
            compress=fetch.compress,
            progress=fetch.progress,
            refresh=refresh,
        )
        for outcome in report.outcomes:
            if outcome.status == CACHED:
                result.from_registry.add(outcome.name)
            elif outcome.name in refresh:
                log.warning("loading %s as cached", outcome.refs[0])
            else:
                result.problems[outcome.name] = (
                    f"not in the cache, and fetching it failed: {outcome.detail}"
                )
    return result


def _warn_unreachable(
    unreachable: dict[str, RegistryUnreachableError], wanted: Sequence[Wanted]
) -> None:
    """One warning for the run, however many images it concerns."""
    first = next(iter(unreachable.values()))
    names = [item.written[0] for item in wanted if item.canonical in unreachable]
    log.warning(
        "registries can't be reached (%s); the cache answers for %d images: %s",
        first,
        len(names),
        ", ".join(names),
    )
