"""Registry credentials for the tests: the htpasswd user and Docker config files naming it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

# A bcrypt hash of PASSWORD (cost 4, what Go's bcrypt accepts as its minimum), made with
# `python3 -c "import crypt; print(crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH,
# rounds=16)))"`: neither venv has bcrypt, and apache2-utils is not installed.
USER = "tester"
PASSWORD = "s3cret-for-tests"
HTPASSWD = f"{USER}:$2b$04$6rAE1p70LT6rgavXuUzoSOXSrjpHN7pI/ckJ5NHyuSYmAs9AnMxua\n"


def htpasswd_auth_yaml(path: Path) -> str:
    """Writes the htpasswd file to ``path``; the ``auth:`` section of a registry using it."""
    path.write_text(HTPASSWD)
    return f"auth:\n  htpasswd:\n    realm: forklift-boot-test\n    path: {path}\n"


def docker_config(directory: Path, document: dict[str, Any]) -> str:
    """``directory`` with ``document`` as its config.json, for DOCKER_CONFIG."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(document))
    return str(directory)


def basic(user: str, password: str) -> str:
    """The ``auth`` value of a config.json entry."""
    return base64.b64encode(f"{user}:{password}".encode()).decode()
