"""containerd as an image source and target, through ``ctr`` (the only module that runs it).

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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from forklift_boot.archive.load_archive import ArchiveImage, write_load_archive
from forklift_boot.archive.oci_layout import (
    copied_from_layout,
    import_oci_layout,
    platform_object,
)
from forklift_boot.cache import (
    BUFFER_SIZE,
    INDEX_MEDIA_TYPES,
    CacheReader,
    CacheWriter,
    Descriptor,
)
from forklift_boot.errors import CacheError, EngineError, EngineUnavailableError, ImageRefError
from forklift_boot.images import ByteCounter, CopiedImage, LoadPlan, SourceImage, Wanted
from forklift_boot.platforms import best_match, parse_platform, platform_of
from forklift_boot.refs import ImageRef, parse_image_ref

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_NAMESPACE = "default"
CONNECT_TIMEOUT = "10s"


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
        found_platform = _config_platform(config_document)
        descriptor = Descriptor(
            descriptor.media_type,
            descriptor.digest,
            descriptor.size,
            platform=platform_object(config_document),
        )
        return ResolvedImage(descriptor, config, layers, found_platform)


class ContainerdSource:
    """Copies images out of containerd with one ``ctr images export`` stream, blobs unchanged."""

    def __init__(self, ctr: Ctr, platform: str, *, all_platforms: bool = False) -> None:
        self.ctr = ctr
        self.platform = platform
        self.all_platforms = all_platforms
        self.description = ctr.where
        self._record_names: dict[str, str] = {}  # canonical -> the containerd name found

    def find(self, wanted: Wanted) -> SourceImage | None:
        try:
            records = self.ctr.images()
        except EngineError as err:
            raise type(err)(f"{err} (looking for {', '.join(wanted.written)})") from err
        for ref in wanted.refs:
            record = records.get(containerd_name(ref)) or _by_repository_digest(records, ref)
            if record is None:
                continue
            resolved = self.ctr.resolve_record(record, self.platform)
            self._record_names[wanted.canonical] = record.name
            size = resolved.manifest.size + resolved.config.size
            size += sum(layer.size for layer in resolved.layers)
            return SourceImage(
                wanted=wanted,
                image_id=resolved.config.digest,
                registry_digest=ref.digest or record.digest,
                platform=resolved.platform,
                size=size,
            )
        return None

    def copy(
        self,
        images: Sequence[SourceImage],
        writer: CacheWriter,
        *,
        compress: str,
        known_layers: Mapping[str, Descriptor],
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        # Registry blobs are kept as they are: compress and known_layers do not apply.
        names = sorted({self._record_names[image.wanted.canonical] for image in images})
        platform_args = ["--all-platforms"] if self.all_platforms else ["--platform", self.platform]
        about = ", ".join(names)
        layout = import_oci_layout(
            self.ctr.stream_out(["images", "export", *platform_args, "-", *names], ref=about),
            writer,
            what=self.ctr.where,
            on_bytes=on_bytes,
        )
        copied: dict[str, CopiedImage] = {}
        credited: set[str] = set()
        for image in images:
            name = self._record_names[image.wanted.canonical]
            descriptor = layout.names.get(name)
            if descriptor is None:
                raise EngineError(f"{self.ctr.where}: ctr images export left out {name}")
            copied[image.wanted.canonical] = copied_from_layout(
                writer, layout, descriptor, platform=self.platform, name=name, credited=credited
            )
            copied.setdefault(image.image_id, copied[image.wanted.canonical])
        return copied


class ContainerdTarget:
    """Loads cached images into containerd, named as its CRI and nerdctl resolve refs."""

    def __init__(self, ctr: Ctr, platform: str) -> None:
        self.ctr = ctr
        self.platform = platform
        self.description = ctr.where
        self._loaded_layers: set[str] = set()  # layer blobs this run's imports put in

    def resolve(self, ref: str) -> str | None:
        try:
            parsed = parse_image_ref(ref)
        except ImageRefError:
            return None
        record = self.ctr.images().get(containerd_name(parsed))
        if record is None:
            return None
        return self.ctr.resolve_record(record, self.platform).config.digest

    def identity(self, plan: LoadPlan, ref: ImageRef | None = None) -> str:
        return plan.image_id

    def has_image(self, image_id: str) -> bool:
        for record in self.ctr.images().values():
            try:
                if self.ctr.resolve_record(record, self.platform).config.digest == image_id:
                    return True
            except EngineError:
                continue  # another platform only, or incomplete content: not this image
        return False

    def ensure_space(self, plans: Sequence[LoadPlan]) -> None:
        """containerd's root is not known from its socket: nothing to check here."""

    def load(
        self, reader: CacheReader, plan: LoadPlan, *, thin: bool, on_bytes: ByteCounter
    ) -> None:
        names = names_for(plan.wanted.refs)
        image = ArchiveImage(
            manifest=plan.manifest,
            config=plan.config,
            layers=plan.layers,
            repo_tags=(),
            names=dict.fromkeys(names, plan.manifest),
        )
        # containerd keeps the blobs an image names: a layer this run already sent is not
        # sent again (ctr import takes it from the content store).
        omit = frozenset(
            self._loaded_layers & {layer.digest for layer in plan.layers} if thin else ()
        )
        argv = ["images", "import", "--platform", self.platform, "-"]
        try:
            self.ctr.stream_in(
                argv,
                write_load_archive(reader, [image], omit_layers=omit, on_bytes=on_bytes),
                ref=", ".join(names),
            )
        except EngineError as err:
            if not omit:
                raise
            log.warning("thin import of %s failed (%s); sending every layer", names[0], err)
            self.ctr.stream_in(
                argv, write_load_archive(reader, [image], on_bytes=on_bytes), ref=", ".join(names)
            )
        if not self.has_image(plan.image_id):
            raise EngineError(
                f"{self.ctr.where}: ctr images import accepted {plan.wanted.canonical} "
                "but does not list it"
            )
        self._loaded_layers.update(layer.digest for layer in plan.layers)

    def make_resolvable(
        self, pending: Sequence[tuple[LoadPlan, ImageRef]], *, record_digests: bool
    ) -> dict[str, str]:
        """Adds missing names with ``ctr images tag`` (digest names too: they cost nothing)."""
        reasons: dict[str, str] = {}
        for plan, ref in pending:
            records = self.ctr.images()
            source = next(
                (
                    record.name
                    for record in sorted(records.values(), key=lambda r: r.name)
                    if record.digest == plan.manifest.digest
                ),
                None,
            )
            if source is None:
                reasons[ref.written] = f"{self.ctr.where} has no image of {plan.manifest.digest}"
                continue
            try:
                self.ctr.run(
                    "images", "tag", "--force", source, containerd_name(ref), ref=ref.written
                )
            except EngineError as err:
                reasons[ref.written] = str(err)
        return reasons


def _by_repository_digest(records: Mapping[str, ImageRecord], ref: ImageRef) -> ImageRecord | None:
    """For a digest ref: any record of the same repository that points at that digest."""
    if ref.digest is None:
        return None
    for record in sorted(records.values(), key=lambda r: r.name):
        if record.digest != ref.digest:
            continue
        try:
            parsed = parse_image_ref(record.name)
        except ImageRefError:
            continue  # CRI's sha256:<config> names
        if parsed.name == ref.name:
            return record
    return None


def _config_platform(config: Mapping[str, Any]) -> str:
    platform = platform_object(config)
    text = f"{platform['os']}/{platform['architecture']}"
    return f"{text}/{platform['variant']}" if "variant" in platform else text


def _read_all(file: IO[bytes]) -> bytes:
    file.seek(0)
    return file.read(64 * 1024)
