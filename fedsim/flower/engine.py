"""Ray and Flower's simulation engine: starting a private Ray instance (or attaching to a
cluster), sizing the clients' actors, running the apps, and the actors' shelf.

`flwr.simulation.run_simulation` is deprecated upstream (still the in-process engine in
flwr 1.42); calling it only here leaves one place to change. fedsim starts Ray itself,
before Flower would, so that it can pick a private cluster (`address="local"`, never a
stale one from Ray's address file) and keep the offline machines from phoning home.
With `--ray-address` (or RAY_ADDRESS) it attaches to a cluster started with `ray start`
instead; `ray.shutdown()` then only disconnects, and the cluster keeps running. (The
client side reads data through Ray's object store, fedsim.flower.client_app, and the
actor log asks Ray where an actor runs; the rest of fedsim never imports Ray.)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedsim.flower import sentinel
from fedsim.ground import imports, interrupts
from fedsim.ground.config import RAY_RESOURCE_UNIT, RunConfig, flag
from fedsim.ground.errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    """What Ray offers and how fedsim's clients fit into it."""

    cpus: float
    gpus: float
    started_here: bool
    client_resources: dict[str, float]

    def describe(self) -> dict[str, object]:
        return {
            "cpus": self.cpus,
            "gpus": self.gpus,
            "started_here": self.started_here,
            "client_resources": self.client_resources,
            "concurrent_clients": self.concurrent_clients,
        }

    @property
    def concurrent_clients(self) -> int:
        by_cpu = fits(self.cpus, self.client_resources["num_cpus"])
        gpu_share = self.client_resources["num_gpus"]
        return min(by_cpu, fits(self.gpus, gpu_share)) if gpu_share else by_cpu


def fits(total: float, share: float) -> int:
    """How many `share`s Ray places in `total`, counted as Ray does, in whole units:
    ten 0.1-GPU actors fit on one GPU, although 1.0 // 0.1 is 9.0 in floating point."""
    units = round(share / RAY_RESOURCE_UNIT)
    return round(total / RAY_RESOURCE_UNIT) // units if units else 0


def ray_address(cfg: RunConfig) -> str:
    return cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"


def private_ray(cfg: RunConfig) -> bool:
    """fedsim starts a Ray instance of its own on this machine (no cluster is named)."""
    return ray_address(cfg) == "local"


PROBE_SECONDS = 3.0  # how long a cluster address may take to answer a TCP connect


def _lean_local_instance() -> None:
    """A private one-machine instance needs neither the dashboard's API server, nor the
    autoscaler's monitor, nor the log monitor that copies workers' output to the
    driver's console, but Ray 2.55 starts all three even with include_dashboard=False:
    about 1.4 s of start, 1.2 s of shutdown, 270 MB and 3 s of CPU on two cores. (What
    clients print stays in Ray's worker logs; fedsim reports client failures itself.)
    The switches are private (`ray._private.node.Node`), hence ray's exact pin;
    tests/test_faults.py checks that none of them runs and that actors still do.
    Ray's two agents stay: the raylet dies without them. After a kill -9 of this
    process they would wait 60 s for the dead GCS; 3 s is enough on one machine. And
    Ray's processes are stopped at once (SIGKILL), not by a SIGTERM they block."""
    from ray._private.node import Node

    Node.start_api_server = lambda self, **kwargs: None
    Node.start_monitor = lambda self: None
    Node.start_log_monitor = lambda self: None
    kill_all_processes = Node.kill_all_processes

    def kill_at_once(self, check_alive=True, allow_graceful=False, wait=False):
        # Ray's processes have SIGTERM blocked (RayStarter): a graceful stop would wait
        # a second for each before the SIGKILL that ends it
        kill_all_processes(self, check_alive=check_alive, allow_graceful=False, wait=wait)

    Node.kill_all_processes = kill_at_once
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", "3")


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable cluster for minutes, with only warnings: try the
    address for a few seconds first and say so in one line."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(address) if address == "auto" else address
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
        _lean_local_instance()
    else:
        _check_reachable(address)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        if own_code := imports.shipped(list(imports.named(cfg).values())):
            runtime_env["py_modules"] = own_code  # the user's model and algorithm, to every node
    logging.getLogger("ray._private.worker").addFilter(_NoSigtermNotice())
    ray.init(
        address=address,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=True,
        runtime_env=runtime_env,
    )
    _ray_outlives_the_engine()


def _ray_outlives_the_engine() -> None:
    """Flower's Ray backend shuts Ray down when a simulation ends and builds a new pool
    of actors for the next, although fedsim started Ray and runs an experiment's runs
    one after another: Ray is stopped once, by whoever started it (RayStarter), and a
    finished simulation's actors wait on a shelf for the next run with the same client
    resources (`_Shelf`). Private to Flower 1.42 (pinned): `build` is Flower's with the
    shelved actors first; the sweep and equivalence tests check that the next run's
    calls run in the same processes and give the numbers a fresh process gives."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    def build(self: RayBackend, app_fn) -> None:
        pool = BasicActorPool(ClientAppActor, self.client_resources, self.actor_kwargs)
        reused = _SHELF.take(self, pool.actors_capacity)
        pool.pool.extend(reused)
        pool.num_actors = len(reused)
        pool.add_actors_to_pool(pool.actors_capacity - len(reused))
        self.pool, self.app_fn = pool, app_fn
        _pools.append(pool)

    def terminate(self: RayBackend) -> None:
        _SHELF.give_back(self)

    RayBackend.build = build
    RayBackend.terminate = terminate


class _Shelf:
    """Where a finished simulation's actors wait for the next run of the process.

    An actor start costs seconds (a worker process that imports torch and flwr, then
    the run's model and data view): most of a short run, paid by every run of a sweep.
    A simulation's actors are all idle when Flower ends it (its workers have returned
    each actor to the pool), so they are shelved, keyed by their Ray resources, and
    the next build takes them. Only one backend holds actors at a time: a build waits
    (up to HANDOVER_SECONDS) for the previous simulation's wind-down, which fedsim lets
    run while the next run starts (run_simulation); a late wind-down ends its actors.
    Actors of other resources are ended, or Ray could not place the new ones. What an
    actor keeps for a run is keyed by the run's config (fedsim.flower.client_app), so a run
    computes in a reused actor what it computes in a fresh one."""

    HANDOVER_SECONDS = 60.0

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._holder: object | None = None  # the backend whose simulation runs now
        self._resources: tuple = ()
        self._actors: list = []

    def take(self, backend, capacity: int) -> list:
        """The shelved actors `backend` may use (at most `capacity`); it holds them now."""
        resources = tuple(sorted(backend.client_resources.items()))
        with self._changed:
            self._changed.wait_for(lambda: self._holder is None, timeout=self.HANDOVER_SECONDS)
            self._holder = backend
            actors, self._actors = self._actors, []
            if resources != self._resources:
                self._resources = resources
                _end(actors)
                actors = []
        _end(actors[capacity:])
        return actors[:capacity]

    def give_back(self, backend) -> None:
        """Flower ends `backend`'s simulation: shelve its actors, or end them when a
        later build has taken over. After Ray's stop they are gone already (and a
        later instance's shelf is not theirs)."""
        import ray

        if not ray.is_initialized() or not any(pool is backend.pool for pool in _pools):
            return
        actors = backend.pool.pool if backend.pool else []
        with self._changed:
            if self._holder is not backend:
                _end(actors)
                return
            self._holder, self._actors = None, list(actors)
            self._changed.notify_all()

    def clear(self) -> None:
        """Forget the actors (Ray has stopped: they are gone with it)."""
        with self._changed:
            self._holder, self._actors = None, []
            self._changed.notify_all()


def _end(actors: list) -> None:
    for actor in actors:
        actor.terminate.remote()


def _end_actors() -> None:
    """Kill every actor of the engine's pools, idle or running a bundle (Flower's own
    pool keeps the busy ones by their pending result, a private name of flwr 1.42): a
    worker thread waiting on one gets an error instead of waiting on a Ray that is
    about to stop. They would die with the instance anyway; no restart is wanted."""
    import ray

    for pool in _pools:
        for actor in [*pool.pool, *pool._future_to_actor.values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
    _pools.clear()


_SHELF = _Shelf()


def size_clients(cfg: RunConfig) -> Cluster:
    """What Ray offers and how `cfg`'s clients fit into it; a CPU or GPU share the
    cluster cannot give one client is refused (Ray would keep every actor pending)."""
    import ray

    address = ray_address(cfg)
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    share = gpu_share(cfg, cpus, gpus, _gpu_memory_mib() if gpus else None)
    if share > gpus:
        where = "this machine" if private_ray(cfg) else f"the cluster at {address}"
        raise ConfigError(
            flag("gpus_per_client"),
            f"got {share:g}, but Ray has {gpus:g} GPUs on {where}; use 0, or declare "
            "GPUs on the cluster's nodes (ray start --num-gpus N)",
        )
    if cfg.cpus_per_client > cpus:
        raise ConfigError(
            flag("cpus_per_client"),
            f"got {cfg.cpus_per_client:g}, but Ray has {cpus:g} CPUs; no client could run",
        )
    if cfg.gpus_per_client is None and share:
        print(
            f"fedsim: Ray has {gpus:g} GPUs and no --gpus-per-client was given: "
            f"{share:g} GPU per client ({round(1 / share)} side by side on each GPU)",
            flush=True,
        )
    return Cluster(
        cpus=cpus,
        gpus=gpus,
        started_here=private_ray(cfg),
        client_resources={"num_cpus": cfg.cpus_per_client, "num_gpus": share},
    )


# GPU memory one client actor holds: measured 826-894 MiB on an H200 for the CNN
# (nvidia-smi per process; CUDA's context is ~750 of it), docs/performance.md
ACTOR_GPU_MIB = 1024


def gpu_share(cfg: RunConfig, cpus: float, gpus: float, gpu_memory_mib: float | None) -> float:
    """--gpus-per-client if given; else 0 without GPUs, or the share that lets as many
    clients run side by side on each GPU as the CPUs allow (no more than the run's
    clients, nor than ACTOR_GPU_MIB each fit in `gpu_memory_mib`, the driver's GPU's
    memory where it has one). On an H200 every smaller share was faster, down to the
    smallest measured (docs/performance.md, GPU): the CPUs, not the GPU, are the limit.
    The share is rounded down to Ray's unit, so that exactly that many fit."""
    if cfg.gpus_per_client is not None:
        return cfg.gpus_per_client
    if not gpus:
        return 0.0
    side_by_side = fits(cpus, cfg.cpus_per_client) // int(gpus) if gpus >= 1 else 1
    if gpu_memory_mib:
        side_by_side = min(side_by_side, int(gpu_memory_mib // ACTOR_GPU_MIB))
    count = max(1, min(cfg.clients, side_by_side))
    return math.floor(1 / count / RAY_RESOURCE_UNIT) * RAY_RESOURCE_UNIT


def _gpu_memory_mib() -> float | None:
    """The memory of the GPU this process sees (one kind per machine assumed); None
    where it sees none (a driver without a GPU, attached to a cluster that has some)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**20


def run_simulation(
    server_app,
    client_app,
    nodes: int,
    cluster: Cluster,
    finished: threading.Event,
) -> None:
    """Run the apps on Flower's simulation engine over the Ray instance already up.

    `nodes` engine nodes are mailboxes for bundles of virtual clients (fedsim.flower.bundles),
    so Flower's per-node polling costs what one round's messages need, not what the
    population would. Client actors restart when their process dies (Flower's pool
    would keep handing work to a dead one).

    The engine runs in a thread while the main thread waits in short, interruptible
    steps: a blocked main thread may never see Ctrl-C (the signal can land on one of
    Ray's threads), so waiting here is what makes Ctrl-C reliable. Once the round loop
    is over (`finished`) the call returns: the results are written, and Flower's own
    wind-down (queues polled with 1-second timeouts, then ending the actors; Ray stays,
    see _ray_outlives_the_engine) goes on in its thread while the next run starts or
    the process ends.
    """
    from flwr.simulation import run_simulation as flower_run_simulation

    for name in ("flwr", "flwr-sim"):  # fedsim prints its own progress and failures
        logging.getLogger(name).setLevel(logging.CRITICAL)
    failure: list[BaseException] = []

    def simulate() -> None:
        try:
            flower_run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=nodes,
                backend_config={
                    # Flower passes client_resources to the actors' .options(): a killed
                    # actor process is restarted, and the call it was running fails alone
                    "client_resources": {**cluster.client_resources, "max_restarts": -1},
                },
            )
        except BaseException as error:  # handed to the main thread below
            failure.append(error)

    engine = threading.Thread(target=simulate, name="fedsim-simulation", daemon=True)
    _winding_down.append(engine)  # before it starts: a stop then always waits for it
    engine.start()
    while engine.is_alive() and not finished.is_set():
        engine.join(timeout=0.1)
    if failure:
        raise failure[0]


# Flower's engine threads, which may still be winding down when their run has returned
_winding_down: list[threading.Thread] = []
# The actor pools Flower's engine has built on the Ray instance up now
_pools: list = []


def stop_ray(wait: float = 10.0) -> None:
    """Disconnect (and stop the instance if fedsim started it); safe to call twice.
    First end the engine's actors, which releases Flower's worker threads from the
    results they wait for (a run stopped mid-round leaves some waiting on a bundle,
    a frozen client for good), then give Flower's engine threads up to `wait` seconds
    to end: a call one of them makes into a shut-down Ray ends the whole process with
    status 1, and one into the next instance of a process that goes on (a notebook's
    next call) crashes it."""
    import time

    import ray

    _stop_watching()
    if ray.is_initialized():
        _end_actors()
    deadline = time.monotonic() + wait
    while _winding_down:
        thread = _winding_down.pop()
        if thread.ident is not None:  # started
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
    started = _raylet_children()
    if ray.is_initialized():
        ray.shutdown()
    _end_processes(started)
    _SHELF.clear()


def end_raylet_children() -> None:
    """End at once what fedsim's private raylet started (client workers, Ray's agents),
    as a process that leaves without stopping Ray does first. They end by themselves
    when the raylet does, except one that is stopped (SIGSTOP, a debugger): it would
    outlive the run for good."""
    _stop_watching()  # the raylet ends with this process: no node was lost
    _end_processes(_raylet_children())


_raylet: list[int] = []  # the private instance's raylet process id, once it runs


def _raylet_children() -> list[int]:
    """Process ids of the raylet's children, read from /proc (none off Linux, or
    without a private instance)."""
    if not _raylet:
        return []
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == _raylet[0]:  # the parent process id
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
                _watch_raylet()
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


# What the run under way does when the Ray node dies under it (records its status)
_on_node_lost: list[Callable[[str], None]] = []
_notes: list[Path] = []  # the sentinel's notes file, while one watches


@contextmanager
def on_node_lost(record: Callable[[str], None], config_json: Path) -> Iterator[None]:
    """While the body runs, `record(reason)` is called if fedsim's Ray node dies, and
    the sentinel knows `config_json` is the run's (fedsim.flower.sentinel)."""
    _on_node_lost.append(record)
    _note(config_json=str(config_json))
    try:
        yield
    finally:
        _on_node_lost.remove(record)
        _note(config_json="")


def _note(**notes: object) -> None:
    if _notes:
        with contextlib.suppress(OSError):
            sentinel.write_notes(_notes[0], **notes)


# The watcher of the private instance up now: its event is set once fedsim stops Ray
# itself, or the process ends. One per instance: a watcher of an instance stopped
# earlier must never take a later instance's start for a loss of its own node.
_stopping: list[threading.Event] = []


def _stop_watching() -> None:
    """fedsim ends the raylet itself (or the process ends): no node is lost."""
    for stopping in _stopping:
        stopping.set()
    _stopping.clear()
    _note(stopping=True)


atexit.register(_stop_watching)


def _watch_raylet() -> None:
    """Follow this instance's raylet, from a thread here and from the sentinel process
    (which reports for the driver when Ray ends it first); see RayStarter."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    watched = os.pidfd_open(raylet)
    _raylet[:] = [raylet]
    stopping = threading.Event()
    _stopping[:] = [stopping]
    handle, notes = tempfile.mkstemp(prefix="fedsim-sentinel-", suffix=".json")
    os.close(handle)
    _notes[:] = [Path(notes)]
    _note(stopping=False)
    command = [sys.executable, "-m", "fedsim.flower.sentinel", str(raylet), str(os.getpid())]
    command += [notes, node.get_logs_dir_path()]
    subprocess.Popen(command, stdin=subprocess.DEVNULL, close_fds=True)

    def watch() -> None:
        select.select([watched], [], [])  # readable once the process has ended
        os.close(watched)
        if stopping.is_set():
            return
        _note(lost=True)
        for record in list(_on_node_lost):
            with contextlib.suppress(Exception):
                record(sentinel.REASON)
        _note(written=True)
        print(f"error: {sentinel.REASON}", file=sys.stderr, flush=True)
        _note(printed=True)
        os._exit(1)

    threading.Thread(target=watch, name="fedsim-raylet-watch", daemon=True).start()
