"""Named crash points, so that tests can kill forklift-boot with SIGKILL at an exact step.

``FORKLIFT_BOOT_CRASH_AT=<name>`` in the environment makes :func:`checkpoint` of that name kill
the process at once, as a power cut or ``kill -9`` would. It is read once, at import; without
it every checkpoint is a no-op comparison.
"""

from __future__ import annotations

import os
import signal

_CRASH_AT = os.environ.get("FORKLIFT_BOOT_CRASH_AT")


def checkpoint(name: str) -> None:
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)
