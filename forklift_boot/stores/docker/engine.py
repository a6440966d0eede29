"""The Docker Engine API: the only module that imports the docker SDK."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import docker
import docker.errors
import requests

from forklift_boot.errors import EngineError, EngineUnavailableError, ForkliftBootError

log = logging.getLogger(__name__)

STREAM_CHUNK = 1 << 20
# Small calls fail after this; streams (save, load) have no read timeout, since a gigabyte
# from an SD card outlasts any fixed limit.
CALL_TIMEOUT = 120
CONTAINERD_SNAPSHOTTER = "io.containerd.snapshotter.v1"


@dataclass(frozen=True)
class EngineInfo:
    server_version: str
    api_version: str
    storage_driver: str
    data_root: str
    is_containerd_store: bool  # Docker's containerd image store, not the classic graph driver
    platform: str  # os/arch[/variant] of the daemon


@dataclass(frozen=True)
class ImageInfo:
    """What ``docker image inspect`` says of one image."""

    image_id: str  # sha256:<config digest>
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    platform: str
    diff_ids: tuple[str, ...]


class DockerEngine:
    """A Docker daemon reached through its Engine API."""

    def __init__(self, base_url: str, before_connect: Callable[[], None] | None = None) -> None:
        self.base_url = base_url
        self._api: docker.APIClient | None = None
        # e.g. waiting for docker.service, run only if the command needs Docker at all.
        self._before_connect = before_connect

    @property
    def api(self) -> docker.APIClient:
        """Connects on first use: a run with nothing to do never needs Docker."""
        if self._api is None:
            if self._before_connect is not None:
                self._before_connect()
                self._before_connect = None
            try:
                # "auto": Docker 20.10 refuses clients newer than its API 1.41.
                self._api = docker.APIClient(
                    base_url=self.base_url, version="auto", timeout=CALL_TIMEOUT
                )
            except docker.errors.DockerException as err:
                raise self._unavailable(err) from err
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()

    def reconnect(self) -> None:
        """A new connection pool, after the daemon restarted under us (it may not answer yet)."""
        version = self.api.api_version
        self.api.close()
        self._api = docker.APIClient(base_url=self.base_url, version=version, timeout=CALL_TIMEOUT)

    def is_answering(self) -> bool:
        try:
            return bool(self.api.ping())
        except (
            requests.exceptions.RequestException,
            docker.errors.DockerException,
            EngineUnavailableError,
        ):
            return False

    # Queries

    def info(self) -> EngineInfo:
        info = self._call(self.api.info)
        version = self._call(self.api.version)
        driver_status = dict(info.get("DriverStatus") or [])
        arch = _docker_arch(info.get("Architecture", ""))
        return EngineInfo(
            server_version=version.get("Version", ""),
            api_version=self.api.api_version,
            storage_driver=info.get("Driver", ""),
            data_root=info.get("DockerRootDir", ""),
            is_containerd_store=driver_status.get("driver-type") == CONTAINERD_SNAPSHOTTER,
            platform=f"{info.get('OSType', 'linux')}/{arch}",
        )

    def inspect_image(self, ref: str) -> ImageInfo | None:
        """The image a ref or ID resolves to, exactly as the daemon resolves it; None if none.

        ``GET /images/<ref>/json`` is what ``docker image inspect`` and Compose ask.
        """
        what = f"couldn't inspect image {ref}"
        try:
            response = self.api.get(self._url(f"/images/{quote(ref, safe='/:@')}/json"))
        except requests.exceptions.RequestException as err:
            raise self._unavailable(err) from err
        if response.status_code == 404:
            return None
        # Anything else (a malformed ref is a 400) is an error, not "missing".
        _check_status(response, what)
        raw = response.json()
        return _image_info(raw)

    def list_image_ids(self) -> list[str]:
        images = self._call(self.api.images, all=False, quiet=True)
        return sorted(set(images))

    # Moving images

    def save(self, names: Sequence[str]) -> Iterator[bytes]:
        """One ``docker save`` stream for all ``names`` (shared layers arrive once).

        The Engine API takes several names (``GET /images/get?names=a&names=b``) even where the
        SDK's public API takes one (docker-py#2490).
        """
        what = f"couldn't export {', '.join(names)} from Docker"
        try:
            response = self.api.get(
                self._url("/images/get"), params={"names": list(names)}, stream=True, timeout=None
            )
            _check_status(response, what)
            yield from response.iter_content(STREAM_CHUNK, decode_unicode=False)
        except requests.exceptions.RequestException as err:
            raise EngineError(f"{what}: the stream broke ({_root_cause(err)})") from err

    def load(self, archive: Iterable[bytes]) -> list[str]:
        """Streams an image archive into ``POST /images/load``; returns Docker's messages."""
        try:
            response = self.api.post(
                self._url("/images/load"),
                data=iter(archive),
                params={"quiet": "1"},
                stream=True,
                timeout=None,
            )
            _check_status(response, "Docker refused the image")
            messages = []
            for line in response.iter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item.get("error") or item.get("errorDetail"):
                    detail = item.get("errorDetail") or {}
                    raise EngineError(
                        f"Docker refused the image: {detail.get('message') or item.get('error')}"
                    )
                if item.get("stream"):
                    messages.append(str(item["stream"]).strip())
            return messages
        except ForkliftBootError:
            raise  # the archive itself failed (a damaged blob): Docker got a truncated stream
        except requests.exceptions.RequestException as err:
            # requests may wrap our own generator's error; report that one.
            own = _own_error(err)
            if own is not None:
                raise own from err
            raise EngineError(f"couldn't load into Docker: the stream broke ({err})") from err

    def tag(self, image_id: str, repository: str, tag: str) -> None:
        self._call(self.api.tag, image_id, repository, tag)

    def remove_image(self, ref: str) -> None:
        try:
            self.api.remove_image(ref)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as err:
            raise EngineError(f"couldn't remove image {ref}: {_explain(err)}") from err

    # Helpers

    def _url(self, path: str) -> str:
        return f"{self.api.base_url}/v{self.api.api_version}{path}"

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except docker.errors.APIError as err:
            raise EngineError(f"Docker refused the request: {_explain(err)}") from err
        except (requests.exceptions.ConnectionError, docker.errors.DockerException) as err:
            raise self._unavailable(err) from err

    def _unavailable(self, err: Exception) -> EngineUnavailableError:
        return EngineUnavailableError(
            f"couldn't reach Docker at {self.base_url}: {_root_cause(err)}; is docker.service "
            "running, and is DOCKER_HOST right?"
        )


def _image_info(raw: Mapping[str, Any]) -> ImageInfo:
    platform = f"{raw.get('Os', 'linux')}/{raw.get('Architecture', '')}"
    if raw.get("Variant"):
        platform += f"/{raw['Variant']}"
    return ImageInfo(
        image_id=raw["Id"],
        repo_tags=tuple(raw.get("RepoTags") or ()),
        repo_digests=tuple(raw.get("RepoDigests") or ()),
        size=int(raw.get("Size") or 0),
        platform=platform,
        diff_ids=tuple((raw.get("RootFS") or {}).get("Layers") or ()),
    )


def _docker_arch(uname_machine: str) -> str:
    """``docker info``'s Architecture is uname's (x86_64, aarch64); images use GOARCH names."""
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm/v7", "armv6l": "arm/v6"}.get(
        uname_machine, uname_machine
    )


def _check_status(response: requests.Response, what: str) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json().get("message", "")
    except ValueError:
        message = response.text
    raise EngineError(f"{what}: {message.strip() or response.reason} (HTTP {response.status_code})")


def _explain(err: docker.errors.APIError) -> str:
    return str(err.explanation or err).strip()


def _own_error(err: BaseException) -> ForkliftBootError | None:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ForkliftBootError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    text = str(err).strip()
    return text.rsplit(": ", 1)[-1] if len(text) > 120 else text
