"""A token service for ``docker-registry``'s ``auth: token:`` (distribution's JWT tokens).

Keys and the certificate come from ``openssl``; tokens are RS256 JWTs signed with
``openssl dgst -sha256 -sign`` and carry the certificate in ``x5c``, which the registry checks
against its ``rootcertbundle``. Users are checked with HTTP basic auth when given. Standard
library and the openssl command only, so it runs on both test stacks.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.testbed.http_server import serve_in_background

ISSUER = "forklift-boot-test-issuer"
SERVICE = "forklift-boot-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer:
    """``GET /token?service=...&scope=repository:NAME:ACTIONS`` -> ``{"token": JWT}``.

    Tokens grant pull only, or with ``grant_asked`` the actions each scope asks for (push).
    """

    def __init__(
        self, users: Mapping[str, str] | None = None, *, grant_asked: bool = False
    ) -> None:
        self.users = dict(users or {})  # user -> password; empty: anyone, anonymously
        self.grant_asked = grant_asked
        self.dir = Path(tempfile.mkdtemp(prefix="fb-t"))
        self.key_path = self.dir / "key.pem"
        self.cert_path = self.dir / "cert.pem"
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-keyout", str(self.key_path), "-out", str(self.cert_path),
                "-days", "2", "-subj", "/CN=forklift-boot test token issuer",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        pem = self.cert_path.read_text()
        self._x5c = "".join(
            line for line in pem.splitlines() if line and not line.startswith("-----")
        )
        self.requests: list[dict[str, Any]] = []  # {"user", "scope", "service", "granted"}
        self._lock = threading.Lock()
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._server = serve_in_background(Handler)
        self.port = self._server.server_address[1]

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def registry_auth_yaml(self) -> str:
        """The ``auth:`` section of a registry that trusts this server's tokens."""
        return (
            "auth:\n  token:\n"
            f"    realm: {self.realm}\n"
            f"    service: {SERVICE}\n"
            f"    issuer: {ISSUER}\n"
            f"    rootcertbundle: {self.cert_path}\n"
        )

    def issue(self, subject: str, access: list[dict[str, Any]], service: str) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key_path)],
            input=signing_input.encode(),
            check=True,
            capture_output=True,
        ).stdout
        return signing_input + "." + _b64url(signature)

    def record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TokenServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server_owner: TokenServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server_owner
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        service = (query.get("service") or [""])[0]
        scopes = query.get("scope") or []
        user = self._user()
        if url.path != "/token":
            self._reply(404, {"error": "not found"})
            return
        if owner.users and user is None:
            owner.record({"user": None, "scope": scopes, "service": service, "granted": False})
            self._reply(401, {"details": "wrong or missing credentials"})
            return
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name:
                granted = actions.split(",") if owner.grant_asked else ["pull"]
                access.append({"type": "repository", "name": name, "actions": granted})
        token = owner.issue(user or "", access, service)
        owner.record({"user": user, "scope": scopes, "service": service, "granted": True})
        self._reply(200, {"token": token, "expires_in": 300})

    def _user(self) -> str | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        users = self.server_owner.users
        return user if users.get(user) == password else None

    def _reply(self, status: int, document: Mapping[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
