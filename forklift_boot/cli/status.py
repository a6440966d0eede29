"""``status``: the forklift-boot units' last runs and a summary of the cache."""

from __future__ import annotations

import argparse
import json
from typing import Any, TextIO

from forklift_boot.cache import ImageCache, human_bytes
from forklift_boot.cli.options import Command, add_bool
from forklift_boot.config import Settings
from forklift_boot.errors import ForkliftBootError
from forklift_boot.systemd import SystemdManager

UNITS = ("forklift-boot-cache-img.service", "forklift-boot-load-img.service")


def add_arguments(status: argparse.ArgumentParser) -> None:
    add_bool(status, "--json", "print JSON")


def status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Each unit's last run (result, time, last STATUS=) and a summary of the cache."""
    manager = SystemdManager()
    units: list[dict[str, Any]] = []
    for name in UNITS:
        try:
            units.append(manager.unit_state(name).to_json())
        except ForkliftBootError as err:
            units.append({"unit": name, "error": str(err)})
    with ImageCache(settings.cache_dir).reading() as reader:
        images = reader.images()
        sizes = {d.digest: d.size for image in images for d in reader.referenced_blobs(image)}
    total = sum(sizes.values())
    cache = {"directory": str(settings.cache_dir), "images": len(images), "size": total}
    if args.json:
        json.dump({"units": units, "cache": cache}, out, indent=2)
        out.write("\n")
        return 0
    for unit in units:
        out.write(f"{unit['unit']}:\n")
        if "error" in unit:
            out.write(f"  Error: {unit['error']}\n")
            continue
        out.write(f"  State: {unit['active_state']} ({unit['sub_state']})\n")
        out.write(f"  Last result: {unit['result']}")
        out.write(
            f" (exit status {unit['exit_status']})\n" if unit["exit_status"] is not None else "\n"
        )
        out.write(f"  Last run: {unit['last_run'] or '(never)'}\n")
        out.write(f"  Last status: {unit['status'] or '(none)'}\n")
    out.write(f"Cache: {cache['directory']}\n")
    out.write(f"  Images: {len(images)}\n  Size: {human_bytes(total)}\n")
    return 0


COMMAND = Command(
    "Shows the units' last runs and the cache",
    description=(
        "Shows each forklift-boot unit's last result, time and last status message (from "
        "systemd), and a summary of the cache."
    ),
    add_arguments=add_arguments,
    handler=status,
)
