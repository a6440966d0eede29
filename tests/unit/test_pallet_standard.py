"""ls-img over the real pallet-standard fixture, used in place.

The expected lists were worked out by hand: for each deployment in deployments/**, its package's
compose files (the deployment's, then enabled features' in alphabetical order), the image of
every service in them. Only compose.yml files (and compose-full-site.yml, compose-hello.yml,
compose-whoami.yml) set `image:`; the docs deployment enables `website` but not `full-site`, so
its image stays the minimal one. Host packages define no compose files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forklift_boot import cli

ENABLED = [
    "docker.io/amir20/dozzle:v8.6.2@sha256:7044962b4e02c6ecc99edf37d730ad71f2c1b0a8fa45e809cecc1178970ab0ad",
    "docker.io/filebrowser/filebrowser:v2.31.2@sha256:a4da9ca8364b0a1fc5dd36f7add92582bf673c0ae0bda8dd9bd13062c41d1715",
    "docker.io/grafana/grafana-oss:11.3.0@sha256:a0f881232a6fb71a0554a47d0fe2203b6888fe77f4cefb7ea62bed7eb54e13c3",
    "docker.io/library/alpine:3.20.3@sha256:beefdbd8a1da6d2915566fde36db9db0b524eb737fc57cd1367effd16dc0d06d",
    "docker.io/library/eclipse-mosquitto:2.0.20@sha256:090d745b6435d10a31acb82eee999ec36a2d7f416cc4f578c0a298c42af2ea14",
    "docker.io/lucaslorentz/caddy-docker-proxy:2.9.1@sha256:7f9a60e1d12da8ef4714cdeaccfce151cfd4b2deb0561f522b90e67784e68a91",
    "docker.io/portainer/portainer-ce:2.23.0@sha256:bac59ebb8208d09aa3f1b13f2467b8145cad01c754dc8c59a7d5cf0677d5c963",
    "docker.io/prom/node-exporter:v1.8.2@sha256:4032c6d5bfd752342c3e631c2f1de93ba6b86c41db6b167b9a35372c139e7706",
    "docker.io/prom/prometheus:v2.55.0@sha256:378f4e03703557d1c6419e6caccf922f96e6d88a530f7431d66a4c4f4b1000fe",
    "ghcr.io/planktoscope/device-backend-processing-segmenter:2024.0.0-beta.2@sha256:e13204f9001a5e5c51af7771c0d6332da1c836df92ca38546d01a6c32ff1fa14",
    "ghcr.io/planktoscope/device-portal:0.2.3@sha256:8d3dc83ede36e4b17c50393ac3ebc34f684dee2f18c81621072d2a5b869fba70",
    "ghcr.io/planktoscope/project-docs:2024.0.0-beta.2-minimal@sha256:e4acfdf2fc67884a409bc031af7459c1a48e0bb2d17140a602cb590700ee171e",
    "tecnativa/docker-socket-proxy:0.3.0@sha256:9e4b9e7517a6b660f2cc903a19b257b1852d5b3344794e3ea334ff00ae677ac2",
]
# deployments/test/*: disabled: true.
DISABLED = [
    "ghcr.io/sargassum-world/pslocal:0.3.8",
    "nginxdemos/hello:0.4@sha256:a97d837baef1734cfaa19c24f333bfdf402b78de634b63b7f51c422d0270300e",
    "nodered/node-red:4.0.5-minimal@sha256:ef19233ba9ee55770460cda733daea83ca258f4f2c9bddf4f2860522a1ea93bb",
    "traefik/whoami:v1.10.3@sha256:43a68d10b9dfcfc3ffbfe4dd42100dc9aeaf29b3a5636c856337a5940f1b4f1c",
]
# packages/core/host/machine-name: source-type oci-image (deployment host/machine-name).
FILE_EXPORT = "ghcr.io/planktoscope/machine-name:0.1.3"


def _ls_img(
    capsys: pytest.CaptureFixture[str], pallet: Path, tmp_path: Path, *flags: str
) -> list[str]:
    code = cli.main(["ls-img", "--pallet", str(pallet), "--workspace", str(tmp_path), *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.splitlines()


def test_enabled_deployments(
    capsys: pytest.CaptureFixture[str], pallet_standard_dir: Path, tmp_path: Path
) -> None:
    assert _ls_img(capsys, pallet_standard_dir, tmp_path) == ENABLED


def test_include_disabled(
    capsys: pytest.CaptureFixture[str], pallet_standard_dir: Path, tmp_path: Path
) -> None:
    listed = _ls_img(capsys, pallet_standard_dir, tmp_path, "--include-disabled")
    assert listed == sorted(ENABLED + DISABLED)


def test_with_file_exports(
    capsys: pytest.CaptureFixture[str], pallet_standard_dir: Path, tmp_path: Path
) -> None:
    listed = _ls_img(capsys, pallet_standard_dir, tmp_path, "--with-file-exports")
    assert listed == sorted([*ENABLED, FILE_EXPORT])


def test_json_names_the_deployments(
    capsys: pytest.CaptureFixture[str], pallet_standard_dir: Path, tmp_path: Path
) -> None:
    entries = json.loads("\n".join(_ls_img(capsys, pallet_standard_dir, tmp_path, "--json")))
    by_ref = {entry["ref"]: entry for entry in entries}
    assert list(by_ref) == ENABLED
    filebrowser = by_ref[ENABLED[1]]
    assert filebrowser["deployments"] == [
        "apps/filebrowser-root",
        "apps/ps/files-datasets",
        "apps/ps/files-logs",
    ]
    proxy = by_ref[ENABLED[-1]]
    assert proxy["canonical"] == "docker.io/" + ENABLED[-1]
    assert proxy["name"] == "docker.io/tecnativa/docker-socket-proxy"
    assert proxy["tag"] == "0.3.0"
    assert proxy["digest"] == ENABLED[-1].split("@")[1]
