"""Registry credentials and challenges: Docker's ``config.json``, credential helpers, and
``WWW-Authenticate`` headers. Secrets never reach a log line or an exception message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forklift_boot.errors import RegistryError

__all__ = [
    "DOCKER_HUB_CONFIG_KEY",
    "Challenge",
    "CredentialStore",
    "Credentials",
    "HelperRunner",
    "config_key_hostname",
    "parse_www_authenticate",
]

log = logging.getLogger(__name__)

# Docker keeps Docker Hub's credentials under its v1 index address, in auths and for helpers.
DOCKER_HUB_CONFIG_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
HELPER_TIMEOUT = 60.0
# A helper says "no credentials" with exit code 1 and this message on stdout.
_HELPER_NOT_FOUND = "credentials not found"
# A credential helper's Username for an identity token (an OAuth2 refresh token).
IDENTITY_TOKEN_USERNAME = "<token>"


@dataclass(frozen=True)
class Credentials:
    """A user name and secret for one registry; the secret is left out of ``repr``."""

    username: str
    secret: str = field(repr=False)
    # An OAuth2 refresh token (``identitytoken``) instead of a password.
    is_identity_token: bool = False
    source: str = ""  # where they came from, for messages: "config.json", "helper pass"

    def basic_header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.secret}".encode()).decode("ascii")
        return f"Basic {token}"


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: ``Bearer realm="...",service="..."``."""

    scheme: str  # lowercase: "bearer", "basic"
    params: Mapping[str, str]


# RFC 7235: auth-scheme token, then auth-params (name=token or name=quoted-string), commas.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*({_QUOTED}|{_TOKEN})\s*(?:,|$)")
_SCHEME_RE = re.compile(rf"\s*,?\s*({_TOKEN})(?:\s+|$)")


def parse_www_authenticate(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value, in order; unparsable parts end it."""
    challenges: list[Challenge] = []
    position = 0
    text = header.strip()
    while position < len(text):
        scheme = _SCHEME_RE.match(text, position)
        if scheme is None:
            break
        position = scheme.end()
        params: dict[str, str] = {}
        while position < len(text):
            param = _PARAM_RE.match(text, position)
            if param is None:
                break
            name, value = param[1].lower(), param[2]
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[name] = value
            position = param.end()
        challenges.append(Challenge(scheme[1].lower(), params))
        if position < len(text) and not params:
            # token68 (``Negotiate abc==``) or garbage: skip to the next comma.
            comma = text.find(",", position)
            position = len(text) if comma < 0 else comma + 1
    return challenges


def config_key_hostname(key: str) -> str:
    """The host of an ``auths``/``credHelpers`` key, as Docker's ``ConvertToHostname`` reads it:
    ``https://index.docker.io/v1/`` -> ``index.docker.io``."""
    host = key.strip()
    for prefix in ("http://", "https://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
            break
    return host.split("/", 1)[0].lower()


# (helper name, server address) -> the helper's JSON answer, or None when it has nothing.
HelperRunner = Callable[[str, str], "Mapping[str, Any] | None"]


class CredentialStore:
    """Credentials from Docker's ``config.json``: ``credHelpers``, then ``credsStore``, then
    ``auths``; read lazily, once."""

    def __init__(
        self,
        config_dir: Path | None,
        *,
        run_helper: HelperRunner | None = None,
        search_path: str | None = None,
    ) -> None:
        self.config_path = config_dir / "config.json" if config_dir is not None else None
        self._search_path = search_path
        self._run_helper = run_helper or self._run_helper_program
        self._config: dict[str, Any] | None = None
        self._found: dict[str, Credentials | None] = {}

    def lookup(self, host: str) -> Credentials | None:
        """Credentials for a registry host (``docker.io`` for Docker Hub), or None."""
        host = host.lower()
        if host not in self._found:
            self._found[host] = self._lookup(host)
        return self._found[host]

    def _lookup(self, host: str) -> Credentials | None:
        config = self._read_config()
        if not config:
            return None
        is_hub = host in _DOCKER_HUB_HOSTS
        server = DOCKER_HUB_CONFIG_KEY if is_hub else host
        wanted = (
            {config_key_hostname(DOCKER_HUB_CONFIG_KEY), *_DOCKER_HUB_HOSTS} if is_hub else {host}
        )

        helpers = config.get("credHelpers")
        helper = None
        if isinstance(helpers, dict):
            helper = next(
                (name for key, name in helpers.items() if config_key_hostname(key) in wanted),
                None,
            )
        if helper is None and isinstance(config.get("credsStore"), str):
            helper = config["credsStore"]
        if isinstance(helper, str) and helper:
            found = self._from_helper(helper, server, host)
            if found is not None:
                return found
        return self._from_auths(config.get("auths"), wanted, host)

    def _from_helper(self, helper: str, server: str, host: str) -> Credentials | None:
        answer = self._run_helper(helper, server)
        if answer is None:
            log.debug("credential helper %s has no credentials for %s", helper, host)
            return None
        username = answer.get("Username")
        secret = answer.get("Secret")
        if not isinstance(username, str) or not isinstance(secret, str) or not secret:
            raise RegistryError(
                f"couldn't read credentials for {host}: docker-credential-{helper} answered "
                "without a Username and Secret; check the helper (`docker login`)"
            )
        log.debug("using credentials for %s from docker-credential-%s", host, helper)
        if username == IDENTITY_TOKEN_USERNAME:
            return Credentials("", secret, is_identity_token=True, source=f"helper {helper}")
        return Credentials(username, secret, source=f"helper {helper}")

    def _from_auths(self, auths: object, wanted: set[str], host: str) -> Credentials | None:
        if not isinstance(auths, dict):
            return None
        for key, entry in auths.items():
            if not isinstance(key, str) or config_key_hostname(key) not in wanted:
                continue
            if not isinstance(entry, dict):
                continue
            found = self._decode_entry(entry, host)
            if found is not None:
                log.debug("using credentials for %s from %s", host, self.config_path)
                return found
        return None

    def _decode_entry(self, entry: Mapping[str, Any], host: str) -> Credentials | None:
        source = str(self.config_path)
        token = entry.get("identitytoken")
        if isinstance(token, str) and token:
            return Credentials("", token, is_identity_token=True, source=source)
        auth = entry.get("auth")
        if isinstance(auth, str) and auth:
            try:
                decoded = base64.b64decode(auth, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError) as err:
                raise RegistryError(
                    f"couldn't read the credentials for {host} in {self.config_path}: its "
                    "`auth` is not base64 of user:password; run `docker login` again"
                ) from err
            username, colon, password = decoded.partition(":")
            if not colon:
                raise RegistryError(
                    f"couldn't read the credentials for {host} in {self.config_path}: its "
                    "`auth` has no `:` between user and password; run `docker login` again"
                )
            return Credentials(username, password, source=source)
        user, secret = entry.get("username"), entry.get("password")
        if isinstance(user, str) and isinstance(secret, str) and user:
            return Credentials(user, secret, source=source)
        return None

    def _read_config(self) -> dict[str, Any]:
        if self._config is not None:
            return self._config
        self._config = {}
        if self.config_path is None:
            return self._config
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return self._config
        except OSError as err:
            raise RegistryError(
                f"couldn't read Docker's credentials {self.config_path}: {err.strerror or err}"
            ) from err
        try:
            document = json.loads(text)
        except ValueError as err:
            # The message of a JSON error quotes no content, only a position.
            raise RegistryError(
                f"couldn't read Docker's credentials {self.config_path}: not valid JSON ({err})"
            ) from err
        if isinstance(document, dict):
            self._config = document
        return self._config

    def _run_helper_program(self, helper: str, server: str) -> Mapping[str, Any] | None:
        """``docker-credential-<helper> get`` with the server address on stdin."""
        program = f"docker-credential-{helper}"
        path = shutil.which(program, path=self._search_path)
        if path is None:
            raise RegistryError(
                f"couldn't get credentials for {server}: {program} is not installed (named by "
                f"{self.config_path}); install it or remove it from that file"
            )
        env = dict(os.environ)
        if self._search_path is not None:
            env["PATH"] = self._search_path
        try:
            result = subprocess.run(
                [path, "get"],
                input=server.encode(),
                capture_output=True,
                timeout=HELPER_TIMEOUT,
                check=False,
                env=env,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RegistryError(f"couldn't run {program} for {server}: {err}") from err
        stdout = result.stdout.decode("utf-8", "replace")
        if result.returncode != 0:
            if _HELPER_NOT_FOUND in stdout.lower() or _HELPER_NOT_FOUND in (
                result.stderr.decode("utf-8", "replace").lower()
            ):
                return None
            # Its output might hold a secret: say only how it ended.
            raise RegistryError(
                f"couldn't get credentials for {server}: {program} get failed with exit code "
                f"{result.returncode}; try `{program} get` by hand"
            )
        try:
            answer = json.loads(stdout)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise RegistryError(
                f"couldn't get credentials for {server}: {program} get did not print a JSON object"
            )
        return answer
