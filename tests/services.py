"""Background services for tests (a Ray head node, a Flower SuperLink): each starts in a
process group of its own, and `stop` ends exactly what it started, grandchildren included.

Ray and Flower both start helpers that leave the process group (Flower's SuperExec and
simulation processes start new sessions), and a helper whose parent dies is re-parented.
So while services run, the test process is a child subreaper: every orphan of what it
started becomes its child and stays findable, and nothing outside that tree is ever
signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
# Ray swaps 127.0.0.1 for the machine's address and listens on every interface; with
# this flag (meant for one-machine clusters on macOS and Windows) a Ray node and the
# drivers that attach to it keep to loopback.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _set_subreaper(on: bool) -> None:
    """Orphans of our children become ours (on) or init's again (off); Linux only."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[1])


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def descendants(root: int) -> set[int]:
    """Every live process below `root` (by parent links, read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := _parent_of(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and not _is_zombie(child):
                found.add(child)
                todo.append(child)
    return found


def _reap_zombie_children() -> None:
    """Collect the exit status of orphans re-parented to us (we are their subreaper)."""
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and _parent_of(pid) == os.getpid() and _is_zombie(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


class Services:
    """Commands started for one test, each in its own session with its output in a log."""

    def __init__(self) -> None:
        _set_subreaper(True)
        self._known_before = descendants(os.getpid())

    def start(
        self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen:
        with open(log, "ab") as out:
            return subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
            )

    def ours(self) -> set[int]:
        """What these services started: the tree below the test process, less what was there."""
        return descendants(os.getpid()) - self._known_before

    def stop(self, grace: float = 10.0) -> list[str]:
        """SIGTERM everything they started, SIGKILL what is left after `grace` seconds;
        returns what still runs afterwards (an empty list, or the test should fail)."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in self.ours():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.ours() and time.monotonic() < deadline:
                _reap_zombie_children()
                time.sleep(0.1)
        _reap_zombie_children()
        _set_subreaper(False)
        return [f"{pid} {_command(pid)}" for pid in sorted(self.ours())]


def wait_for(process: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    """Block until `text` shows up in the log; fail early if the command exits."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"{process.args[0]} never said {text!r}:\n{tail}")
        time.sleep(0.2)
