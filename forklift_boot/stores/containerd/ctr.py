"""``ctr``, the one way to containerd (the only module that runs it): images, content, names.

Images are named as containerd's CRI and nerdctl resolve a ref as written: the canonical
``docker.io/library/name:tag`` for a tag ref, and ``name@sha256:...`` for a ref that pins a
digest (``name:tag@sha256:...`` resolves by ``name@sha256:...``, the tag ignored). The CRI
plugin's own ``sha256:<config>`` names in ``k8s.io`` count as images but are never changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

from forklift_boot.cache import BUFFER_SIZE, INDEX_MEDIA_TYPES, Descriptor
from forklift_boot.errors import CacheError, EngineError, EngineUnavailableError
from forklift_boot.platforms import (
    best_match,
    parse_platform,
    platform_object,
    platform_of,
    platform_text,
)
from forklift_boot.refs import ImageRef

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
CONNECT_TIMEOUT = "10s"
CONTENT_PLUGIN_TYPE = "io.containerd.content.v1"


@dataclass(frozen=True)
class ImageRecord:
    """One containerd image: a name and the manifest or index it points at."""

    name: str
    media_type: str
    digest: str


@dataclass(frozen=True)
class ResolvedImage:
    """A record's manifest for one platform, with its config digest (the image ID)."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    platform: str


def containerd_name(ref: ImageRef) -> str:
    """The image name containerd's CRI resolves ``ref`` by."""
    if ref.digested:
        return ref.digested
    tagged = ref.with_default_tag().tagged
    assert tagged is not None  # with_default_tag always leaves a tag
    return tagged


def names_for(refs: Iterable[ImageRef]) -> tuple[str, ...]:
    """Every name the refs need: ``name:tag`` per tag ref, ``name@digest`` per digest ref."""
    return tuple(sorted({containerd_name(ref) for ref in refs}))


class Ctr:
    """``ctr --address ADDRESS --namespace NAMESPACE ...``, with one-line errors."""

    def __init__(self, address: str = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE) -> None:
        self.address = address
        self.namespace = namespace
        self.where = f"containerd at {address} (namespace {namespace})"
        self._content: dict[str, bytes] = {}  # content is immutable: cache it by digest

    def argv(self, *args: str) -> list[str]:
        return [
            "ctr",
            "--address",
            self.address,
            "--namespace",
            self.namespace,
            "--connect-timeout",
            CONNECT_TIMEOUT,
            *args,
        ]

    def check_socket(self) -> None:
        try:
            mode = os.stat(self.address).st_mode
        except OSError as err:
            raise EngineUnavailableError(
                f"couldn't reach {self.where}: {err.strerror or err}"
            ) from err
        if not stat.S_ISSOCK(mode):
            raise EngineUnavailableError(f"couldn't reach {self.where}: not a socket")

    def run(self, *args: str, ref: str | None = None) -> str:
        self.check_socket()
        try:
            done = subprocess.run(self.argv(*args), capture_output=True, check=False)
        except OSError as err:
            raise EngineUnavailableError(f"couldn't run ctr for {self.where}: {err}") from err
        if done.returncode != 0:
            raise self.error(args[:2], done.stderr, ref)
        return done.stdout.decode(errors="replace")

    def error(self, action: Sequence[str], stderr: bytes, ref: str | None) -> EngineError:
        message = " ".join(stderr.decode(errors="replace").split()).removeprefix("ctr: ")
        message = message or "it failed with no message"
        about = f" for {ref}" if ref else ""
        text = f"{self.where}: ctr {' '.join(action)}{about} failed: {message}"
        if "failed to dial" in message or "connection refused" in message:
            return EngineUnavailableError(text)
        return EngineError(text)

    def stream_out(self, args: Sequence[str], *, ref: str) -> Iterator[bytes]:
        """ctr's stdout, chunk by chunk; an EngineError at the end if ctr failed."""
        self.check_socket()
        with tempfile.TemporaryFile() as errors:
            try:
                process = subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=errors)
            except OSError as err:
                raise EngineUnavailableError(f"couldn't run ctr for {self.where}: {err}") from err
            assert process.stdout is not None
            try:
                while chunk := process.stdout.read(BUFFER_SIZE):
                    yield chunk
            except BaseException:
                # The reader failed or stopped early: don't leave ctr behind.
                process.kill()
                process.wait()
                raise
            finally:
                process.stdout.close()
            if process.wait() != 0:
                raise self.error(args[:2], _read_all(errors), ref)

    def stream_in(self, args: Sequence[str], chunks: Iterable[bytes], *, ref: str) -> None:
        """Feeds ``chunks`` to ctr's stdin; an EngineError if ctr failed."""
        self.check_socket()
        with tempfile.TemporaryFile() as errors:
            try:
                process = subprocess.Popen(
                    self.argv(*args),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                )
            except OSError as err:
                raise EngineUnavailableError(f"couldn't run ctr for {self.where}: {err}") from err
            assert process.stdin is not None
            try:
                for chunk in chunks:
                    process.stdin.write(chunk)
                process.stdin.close()
            except BrokenPipeError:
                pass  # ctr stopped reading: its exit status and stderr say why
            except BaseException:
                process.kill()
                process.wait()
                raise
            finally:
                if not process.stdin.closed:
                    with contextlib.suppress(BrokenPipeError):
                        process.stdin.close()
            if process.wait() != 0:
                raise self.error(args[:2], _read_all(errors), ref)

    def images(self) -> dict[str, ImageRecord]:
        """Every image record by name (CRI's ``sha256:<config>`` names included)."""
        records = {}
        for line in self.run("images", "ls").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[2].startswith("sha256:"):
                records[fields[0]] = ImageRecord(fields[0], fields[1], fields[2])
        return records

    def content_root(self) -> str | None:
        """Where containerd says its content store is (the content plugin's ``root`` export,
        from ``ctr plugins ls -d``); None if it doesn't say. A path in containerd's own mount
        namespace: the caller checks that it holds the blobs it expects."""
        try:
            text = self.run("plugins", "ls", "-d")
        except EngineError as err:
            log.debug("%s", err)
            return None
        in_content = False
        for line in text.splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0] == "Type:":
                in_content = fields[1] == CONTENT_PLUGIN_TYPE
            elif in_content and len(fields) == 2 and fields[0] == "root":
                return fields[1]
        return None

    def content(self, digest: str, *, ref: str) -> bytes:
        data = self._content.get(digest)
        if data is None:
            self.check_socket()
            done = subprocess.run(
                self.argv("content", "get", digest), capture_output=True, check=False
            )
            if done.returncode != 0:
                raise self.error(("content", "get"), done.stderr, ref)
            data = done.stdout
            self._content[digest] = data
        return data

    def content_json(self, digest: str, *, ref: str) -> Any:
        try:
            return json.loads(self.content(digest, ref=ref))
        except ValueError as err:
            raise EngineError(f"{self.where}: {ref}: {digest} is not JSON: {err}") from err

    def resolve_record(self, record: ImageRecord, platform: str) -> ResolvedImage:
        """The record's manifest for ``platform`` (chosen from an index as containerd does)."""
        ref = record.name
        descriptor = Descriptor(record.media_type, record.digest, 0)
        if record.media_type in INDEX_MEDIA_TYPES:
            index = self.content_json(record.digest, ref=ref)
            children = []
            for child in index.get("manifests") or []:
                try:
                    child_descriptor = Descriptor.from_json(child, f"index of {ref}")
                except CacheError as err:
                    raise EngineError(f"{self.where}: {ref}: {err}") from err
                children.append((platform_of(child_descriptor.platform), child_descriptor))
            chosen = best_match(parse_platform(platform), children)
            if chosen is None:
                raise EngineError(f"{self.where}: {ref} has no {platform} manifest")
            descriptor = chosen
        document = self.content_json(descriptor.digest, ref=ref)
        try:
            config = Descriptor.from_json(document["config"], f"config of {ref}")
            layers = tuple(
                Descriptor.from_json(layer, f"layer of {ref}") for layer in document["layers"]
            )
        except (KeyError, TypeError, ValueError) as err:
            raise EngineError(f"{self.where}: {ref}: malformed manifest ({err})") from err
        if descriptor.size == 0:
            size = len(self.content(descriptor.digest, ref=ref))
            descriptor = Descriptor(descriptor.media_type, descriptor.digest, size)
        config_document = self.content_json(config.digest, ref=ref)
        found_platform = platform_text(platform_object(config_document))
        descriptor = Descriptor(
            descriptor.media_type,
            descriptor.digest,
            descriptor.size,
            platform=platform_object(config_document),
        )
        return ResolvedImage(descriptor, config, layers, found_platform)


def _read_all(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read(64 * 1024)
