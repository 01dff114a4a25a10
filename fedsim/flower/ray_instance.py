"""Ray's lifetime for fedsim: a private instance started in a thread of its own (or a
cluster attached to), and stopped, with everything fedsim started on it.

fedsim starts Ray itself, before Flower would, so that it can pick a private cluster
(`address="local"`, never a stale one from Ray's address file) and keep the offline
machines from phoning home. With `--ray-address` (or RAY_ADDRESS) it attaches to a
cluster started with `ray start` instead; `ray.shutdown()` then only disconnects, and
the cluster keeps running. Ray is imported only in fedsim.flower (and
fedsim.ground.insides, for its private names).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path

from fedsim.flower import engine, node_watch, shelf
from fedsim.flower.sizing import Cluster, private_ray, ray_address, size_clients
from fedsim.ground import imports, insides, interrupts
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import flag

PROBE_SECONDS = 3.0  # how long a cluster address may take to answer a TCP connect


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable cluster for minutes, with only warnings: try the
    address for a few seconds first and say so in one line."""
    try:
        resolved = insides.bootstrap_address(address) if address == "auto" else address
    except Exception as error:  # no cluster named in Ray's address file, or a bad one
        raise ConfigError(flag("ray_address"), f"no Ray cluster to attach to ({error})") from None
    host, _, port = (resolved or "").removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_SECONDS).close()
    except (OSError, ValueError):
        raise ConfigError(
            flag("ray_address"),
            f"{resolved or address} does not answer (is the cluster up? `ray status` tells)",
        ) from None


class _NoSigtermNotice(logging.Filter):
    """ray.init outside the main thread (RayStarter) warns that it set no SIGTERM
    handler: fedsim's own handler is the one wanted, so the notice is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def start_ray(cfg: RunConfig) -> None:
    """Start a private Ray instance, or attach to `--ray-address`."""
    import ray

    address = ray_address(cfg)
    pythonpath = os.pathsep.join(p for p in sys.path if p)
    if private_ray(cfg):
        # Workers of a private instance inherit the driver's environment. A runtime_env
        # would do the same but stop Ray from handing actors its pre-started workers,
        # which costs seconds per actor.
        os.environ["PYTHONPATH"] = pythonpath
        runtime_env = None
        insides.lean_local_instance()
    else:
        _check_reachable(address)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        if own_code := imports.shipped(list(imports.named(cfg).values())):
            runtime_env["py_modules"] = own_code  # the user's model and algorithm, to every node
    logging.getLogger(insides.RAY_WORKER_LOGGER).addFilter(_NoSigtermNotice())
    ray.init(
        address=address,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env=runtime_env,
    )
    shelf.install()


def stop_ray(wait: float = 10.0) -> None:
    """Disconnect (and stop the instance if fedsim started it); safe to call twice.
    First end the engine's actors, which releases Flower's worker threads from the
    results they wait for (a run stopped mid-round leaves some waiting on a bundle,
    a frozen client for good), then give Flower's engine threads up to `wait` seconds
    to end: a call one of them makes into a shut-down Ray ends the whole process with
    status 1, and one into the next instance of a process that goes on (a notebook's
    next call) crashes it."""
    import ray

    node_watch.stop_watching()
    if ray.is_initialized():
        shelf.end_actors()
    engine.wind_down(wait)
    started = _raylet_children()
    if ray.is_initialized():
        ray.shutdown()
    _end_processes(started)
    shelf.SHELF.clear()


def end_raylet_children() -> None:
    """End at once what fedsim's private raylet started (client workers, Ray's agents),
    as a process that leaves without stopping Ray does first. They end by themselves
    when the raylet does, except one that is stopped (SIGSTOP, a debugger): it would
    outlive the run for good."""
    node_watch.stop_watching()  # the raylet ends with this process: no node was lost
    _end_processes(_raylet_children())


def _raylet_children() -> list[int]:
    """Process ids of the raylet's children, read from /proc (none off Linux, or
    without a private instance)."""
    raylet = node_watch.raylet()
    if raylet is None:
        return []
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == raylet:  # the parent process id
                children.append(int(stat.parent.name))
    return children


def _end_processes(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# Signals that stop a run: Ctrl-C; `kill`, `timeout`, systemd and Slurm's SIGTERM; a
# closed terminal's SIGHUP (fedsim.front.cli handles them in the driver). Schedulers send them
# to a whole process group (`timeout`, Slurm, a closed terminal): Ray's processes must
# not die of them before the driver has stopped the run and recorded it.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class RayStarter:
    """`start_ray` in a thread of its own, so that Ray starts (seconds) while the driver
    imports torch and loads the data; one instance serves every run of an experiment.

    The thread lives until Ray is stopped: Ray's processes are started with a
    parent-death signal, which Linux sends when the *thread* that started them ends.
    It blocks the stop signals before it starts Ray's processes, which inherit the
    mask: SIGTERM or SIGHUP sent to the driver's whole process group reach the driver
    alone (Ray blocks SIGINT in them itself), and the driver stops Ray. ray.init also
    puts a handler of Ray's own on SIGTERM in the driver (a six-line stack dump, then
    exit 134); `cluster()`, called from the main thread, puts the caller's back.

    On a private instance a watcher thread follows the raylet: if it dies under a run
    (killed, out of memory), the driver would be ended by Ray within moments with
    status 1 and no word, so the watcher first tells the run (`on_node_lost`), says
    one `error:` line, and ends the process itself."""

    def __init__(self, cfg: RunConfig) -> None:
        self._cfg = cfg
        self._ready = threading.Event()
        self._release = threading.Event()
        self._started = False
        self._error: BaseException | None = None
        self.seconds = 0.0
        self._handlers = (
            {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
            if threading.current_thread() is threading.main_thread()
            else {}
        )
        self._thread = threading.Thread(target=self._keep, name="fedsim-ray", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        import time

        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by Ray's processes
        tick = time.perf_counter()
        try:
            start_ray(self._cfg)
            self._started = True
        except BaseException as error:  # handed to the caller by cluster()
            self._error = error
        finally:
            self.seconds = time.perf_counter() - tick
            self._ready.set()
        if self._started:
            if private_ray(self._cfg):
                node_watch.watch_raylet()
            self._release.wait()
            stop_ray()

    def cluster(self, cfg: RunConfig) -> Cluster:
        """Wait (interruptibly) until Ray is up, then size `cfg`'s clients; the start's
        error, if any, is raised."""
        while not self._ready.wait(timeout=0.1):
            pass
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._handlers.items():
                if handler is not None:  # Python cannot see that Ray's replaced it: always
                    signal.signal(sig, handler)
        if self._error is not None:
            raise self._error
        return size_clients(cfg)

    def stop(self) -> None:
        """Stop Ray (if it started) and let the thread end; safe to call twice. A Ctrl-C
        meanwhile does not cut it short (fedsim.ground.interrupts)."""
        with interrupts.deferred():
            self._ready.wait(timeout=120)
            self._release.set()
            self._thread.join(timeout=30)
