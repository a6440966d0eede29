"""Registry credentials: WWW-Authenticate challenges, Docker's config.json, credential helpers."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from forklift_boot.config import docker_config_dir
from forklift_boot.errors import RegistryError
from forklift_boot.stores.registry.auth import (
    Challenge,
    Credentials,
    CredentialStore,
    config_key_hostname,
    parse_www_authenticate,
)

SECRET = "pa55-W0rd-n0t-for-logs"


# WWW-Authenticate


def test_docker_hub_bearer_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    assert parse_www_authenticate(header) == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/nginx:pull",
            },
        )
    ]


def test_basic_challenge_and_case() -> None:
    assert parse_www_authenticate('BASIC realm="Registry Realm"') == [
        Challenge("basic", {"realm": "Registry Realm"})
    ]


def test_quoted_commas_escapes_and_spaces() -> None:
    header = (
        'Bearer realm = "https://a.example/token?x=1,2" , service=reg, '
        'scope="repository:a/b:pull,push", error="insufficient_scope", '
        'x="say \\"hi\\""'
    )
    (challenge,) = parse_www_authenticate(header)
    assert challenge.params == {
        "realm": "https://a.example/token?x=1,2",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
        "x": 'say "hi"',
    }


def test_several_challenges_in_one_header() -> None:
    header = 'Basic realm="r1", Bearer realm="https://t/token",service="s"'
    assert [c.scheme for c in parse_www_authenticate(header)] == ["basic", "bearer"]
    assert parse_www_authenticate(header)[1].params == {"realm": "https://t/token", "service": "s"}


@pytest.mark.parametrize("header", ["", "   ", "Negotiate", "Negotiate abc=="])
def test_challenges_without_params(header: str) -> None:
    challenges = parse_www_authenticate(header)
    assert all(not c.params for c in challenges)
    assert [c.scheme for c in challenges] == (["negotiate"] if header.strip() else [])


# config.json


@pytest.mark.parametrize(
    ("key", "host"),
    [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("registry.example.com", "registry.example.com"),
        ("http://127.0.0.1:5000", "127.0.0.1:5000"),
        ("https://ghcr.io/v2/", "ghcr.io"),
        ("GHCR.IO", "ghcr.io"),
    ],
)
def test_config_keys_to_hostnames(key: str, host: str) -> None:
    assert config_key_hostname(key) == host


def test_docker_config_dir_follows_docker_config_then_home(tmp_path: Path) -> None:
    assert docker_config_dir({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path
    assert docker_config_dir({"HOME": "/home/pi"}) == Path("/home/pi/.docker")
    assert docker_config_dir({}) is None


def write_config(directory: Path, document: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(document))
    return directory


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_auths_by_host_and_docker_hub_key(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": auth("hubuser", SECRET)},
                "registry.example.com:5000": {"auth": auth("me", "pw:with:colons")},
                "https://ghcr.io": {"identitytoken": "refresh-me"},
                "old.example.com": {"username": "legacy", "password": "pw"},
                "empty.example.com": {},
            }
        },
    )
    store = CredentialStore(config)
    hub = store.lookup("docker.io")
    assert hub is not None
    assert (hub.username, hub.secret) == ("hubuser", SECRET)
    assert store.lookup("registry-1.docker.io") == hub
    mine = store.lookup("registry.example.com:5000")
    assert mine is not None
    assert (mine.username, mine.secret) == ("me", "pw:with:colons")
    ghcr = store.lookup("ghcr.io")
    assert ghcr is not None
    assert ghcr.is_identity_token
    assert ghcr.secret == "refresh-me"
    legacy = store.lookup("old.example.com")
    assert legacy is not None
    assert legacy.username == "legacy"
    assert store.lookup("empty.example.com") is None
    assert store.lookup("registry.example.com") is None  # the port is part of the host
    assert store.lookup("quay.io") is None


def test_no_config_means_anonymous(tmp_path: Path) -> None:
    assert CredentialStore(tmp_path / "missing").lookup("docker.io") is None
    assert CredentialStore(None).lookup("docker.io") is None


def test_secrets_stay_out_of_repr_and_errors(tmp_path: Path) -> None:
    credentials = Credentials("user", SECRET)
    assert SECRET not in repr(credentials)
    assert credentials.basic_header() == "Basic " + auth("user", SECRET)
    config = write_config(tmp_path, {"auths": {"r.example": {"auth": "!!" + SECRET}}})
    with pytest.raises(RegistryError, match="not base64") as caught:
        CredentialStore(config).lookup("r.example")
    assert SECRET not in str(caught.value)
    no_colon = base64.b64encode(SECRET.encode()).decode()
    write_config(tmp_path, {"auths": {"r.example": {"auth": no_colon}}})
    with pytest.raises(RegistryError, match="no `:`") as caught:
        CredentialStore(config).lookup("r.example")
    assert SECRET not in str(caught.value)


def test_malformed_config_names_the_file(tmp_path: Path) -> None:
    tmp_path.joinpath("config.json").write_text('{"auths": {"x": {"auth": "' + SECRET)
    with pytest.raises(RegistryError, match="not valid JSON") as caught:
        CredentialStore(tmp_path).lookup("x")
    assert str(tmp_path / "config.json") in str(caught.value)
    assert SECRET not in str(caught.value)


# Credential helpers, as real programs on a search path


def helper_script(bin_dir: Path, name: str, body: str) -> Path:
    """``docker-credential-<name>``: a shell script that answers ``get`` from stdin."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


ANSWERING_HELPER = """\
[ "$1" = get ] || exit 2
read -r server
echo "$server" >> "$(dirname "$0")/asked"
case "$server" in
  https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"hub","Secret":"hub-secret"}' "$server" ;;
  127.0.0.1:5000) printf '{"ServerURL":"%s","Username":"<token>","Secret":"identity"}' "$server" ;;
  registry.example.com) printf '{"ServerURL":"%s","Username":"helped","Secret":"%s"}' "$server" "$SECRET_FROM_ENV" ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


def search_path(bin_dir: Path) -> str:
    return f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"


def test_cred_helpers_get_the_host_on_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_FROM_ENV", SECRET)
    bin_dir = tmp_path / "bin"
    helper_script(bin_dir, "fbtest", ANSWERING_HELPER)
    config = write_config(
        tmp_path / "docker",
        {
            "auths": {"registry.example.com": {"auth": auth("file-user", "file-pw")}},
            "credHelpers": {
                "registry.example.com": "fbtest",
                "127.0.0.1:5000": "fbtest",
                "https://index.docker.io/v1/": "fbtest",
                "other.example.com": "fbtest",
            },
        },
    )
    store = CredentialStore(config, search_path=search_path(bin_dir))
    helped = store.lookup("registry.example.com")
    assert helped is not None
    assert (helped.username, helped.secret) == ("helped", SECRET)  # the helper wins over auths
    assert helped.source == "helper fbtest"
    token = store.lookup("127.0.0.1:5000")
    assert token is not None
    assert token.is_identity_token
    assert token.secret == "identity"
    hub = store.lookup("docker.io")
    assert hub is not None
    assert hub.username == "hub"
    assert store.lookup("other.example.com") is None  # "credentials not found": anonymous
    store.lookup("registry.example.com")  # looked up once per run
    asked = (bin_dir / "asked").read_text().splitlines()
    assert asked == [
        "registry.example.com",
        "127.0.0.1:5000",
        "https://index.docker.io/v1/",
        "other.example.com",
    ]


def test_creds_store_serves_every_host_and_falls_back_to_auths(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    helper_script(bin_dir, "store", ANSWERING_HELPER.replace('"$SECRET_FROM_ENV"', '"s"'))
    config = write_config(
        tmp_path / "docker",
        {"credsStore": "store", "auths": {"quay.io": {"auth": auth("q", "qpw")}}},
    )
    store = CredentialStore(config, search_path=search_path(bin_dir))
    hub = store.lookup("docker.io")
    assert hub is not None
    assert hub.username == "hub"
    quay = store.lookup("quay.io")  # the store has none; config.json's auths has
    assert quay is not None
    assert quay.username == "q"


def test_missing_or_failing_helpers_are_clear_and_secret_free(tmp_path: Path) -> None:
    config = write_config(tmp_path / "docker", {"credHelpers": {"r.example": "absent"}})
    with pytest.raises(RegistryError, match="docker-credential-absent is not installed"):
        CredentialStore(config, search_path=str(tmp_path / "bin")).lookup("r.example")

    bin_dir = tmp_path / "bin"
    helper_script(bin_dir, "broken", f'echo "leaked {SECRET}"; echo "{SECRET}" >&2; exit 3\n')
    write_config(tmp_path / "docker", {"credHelpers": {"r.example": "broken"}})
    with pytest.raises(RegistryError, match="exit code 3") as caught:
        CredentialStore(config, search_path=search_path(bin_dir)).lookup("r.example")
    assert SECRET not in str(caught.value)

    helper_script(bin_dir, "garbage", f'echo "not json {SECRET}"\n')
    write_config(tmp_path / "docker", {"credHelpers": {"r.example": "garbage"}})
    with pytest.raises(RegistryError, match="did not print a JSON object") as caught:
        CredentialStore(config, search_path=search_path(bin_dir)).lookup("r.example")
    assert SECRET not in str(caught.value)


def test_injected_helper_runner(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def run(helper: str, server: str) -> dict[str, str] | None:
        asked.append((helper, server))
        return {"Username": "u", "Secret": SECRET}

    config = write_config(tmp_path, {"credsStore": "desktop"})
    found = CredentialStore(config, run_helper=run).lookup("ghcr.io")
    assert found is not None
    assert (found.username, found.secret) == ("u", SECRET)
    assert asked == [("desktop", "ghcr.io")]
