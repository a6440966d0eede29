"""What a tag names at its registry now, asked with a bounded wait (load-img's read-through)."""

from __future__ import annotations

import logging

from forklift_boot.errors import RegistryUnreachableError
from forklift_boot.images import Wanted
from forklift_boot.stores.registry.auth import CredentialStore
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.endpoints import DOCKER_HUB_DOMAIN
from forklift_boot.stores.registry.transport import Deadline, RetryPolicy

__all__ = ["LOOKUP_TIMEOUT", "RegistryLookup", "lookup_client"]

log = logging.getLogger(__name__)

# (connect, first byte) per request: a registry on a working network answers a HEAD in well
# under a second; a silent one must not hold a boot for the default 30 s + 60 s.
LOOKUP_TIMEOUT = (3.0, 5.0)


def lookup_client(
    *, mirrors: list[str], credentials: CredentialStore, seconds: float
) -> RegistryClient:
    """A client for lookups: one attempt per endpoint, short timeouts, and ``seconds`` for all
    of its requests together."""
    return RegistryClient(
        mirrors=mirrors,
        credentials=credentials,
        retry=RetryPolicy(attempts=1, mirror_attempts=1, max_total_wait=0.0),
        timeout=LOOKUP_TIMEOUT,
        deadline=Deadline(seconds),
    )


class RegistryLookup:
    """A ``TagLookup``: a HEAD of the manifest (a GET where the registry names no digest).

    A registry that can't be reached once is not asked again in this run: every other image
    it serves fails at once, so a dead registry costs one timeout, not one per image.
    """

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self.description = "its registry"
        self._down: dict[str, RegistryUnreachableError] = {}

    def current_digest(self, wanted: Wanted) -> str | None:
        ref = wanted.refs[0].with_default_tag()
        registry = ref.domain or DOCKER_HUB_DOMAIN
        if registry in self._down:
            raise self._down[registry]
        repository = self.client.repository(ref)
        reference = ref.digest or ref.tag or "latest"
        try:
            head = repository.head_manifest(reference)
            if head is not None and head.digest is None:
                # HEAD unsupported, or no Docker-Content-Digest: the manifest's own hash.
                manifest = repository.get_manifest(reference)
                return manifest.digest if manifest is not None else None
        except RegistryUnreachableError as err:
            self._down[registry] = err
            raise
        return head.digest if head is not None else None
