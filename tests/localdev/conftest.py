"""What the stand-in tests share: telling whether a process runs, finding (and killing) what a failed run left."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def processes_using(directory: Path) -> dict[int, str]:
    """Running processes whose command line mentions ``directory``, by pid (Linux /proc; empty elsewhere)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in text:
            found[int(cmdline.parent.name)] = text
    return found


@pytest.fixture
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Whatever happens in a test, kill what a failed run left behind (servers run in their own sessions)."""
    yield
    for pid in processes_using(tmp_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
