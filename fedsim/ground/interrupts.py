"""Ctrl-C during a call of fedsim's library (fedsim.front.api), in a process that goes on
afterwards (a notebook, a script that catches KeyboardInterrupt and calls again).

The command line leaves the process after an interrupt (fedsim.front.cli), so nothing it
leaves half-done matters; a library call must leave the process as it found it. Two
things would not: an interrupt that lands inside an import (a module half-imported,
torch's C extension among them, breaks every later call with a SystemError or a
segfault), and a second interrupt that cuts short the winding down of the first
(Ray left half-stopped: the next call's `ray.init` fails), and so would one between
Ray's start and the code that will stop it. `held` and `deferred` prevent all three.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

RETRY_SECONDS = 0.05  # how soon an interrupt that met an import is tried again
_deferring = [0]  # how many `deferred` sections the main thread is in


@contextlib.contextmanager
def held() -> Iterator[None]:
    """The first Ctrl-C stops the body (KeyboardInterrupt, as Python's own handler
    raises it), though not in the middle of an import or a `deferred` section: it lands
    just after. Later ones
    are ignored while the body winds down. The default handler is back afterwards.
    Only where Python's default handler is in place (a script, a notebook's cell: a
    handler of the caller's own is left alone), in the main thread, where signals are
    handled."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    stopping = threading.Event()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            return
        if _deferring[0] or importing(frame):
            threading.Timer(RETRY_SECONDS, os.kill, (os.getpid(), signum)).start()
            return
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A section an interrupt must not cut in two: Ray started and the object that will
    stop it stored, or Ray's stop. Under `held`, an interrupt that comes meanwhile
    lands just after it; elsewhere this changes nothing."""
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1


def holding(call: Callable[P, R]) -> Callable[P, R]:
    """`call` with interrupts `held` throughout, its own imports included."""

    @functools.wraps(call)
    def held_call(*args: P.args, **kwargs: P.kwargs) -> R:
        with held():
            return call(*args, **kwargs)

    return held_call


def importing(frame: FrameType | None) -> bool:
    """Whether the main thread is importing a module (importlib's frames on its stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False
