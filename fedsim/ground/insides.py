"""Every private name of Flower, flwr-datasets, datasets and Ray that fedsim touches, in
one module: a replaced method, a private attribute read, a private function called.

Each is a function here, written for the versions in WRITTEN_FOR (pyproject.toml pins
them exactly); the first use in a process compares the installed versions with those
and says, in one line on stderr, which differ: a private name may then be gone or mean
something else. tests/test_insides.py checks each use against the installed packages,
so an upgrade that changes one fails there, by name, before it fails a run.

Nothing else in fedsim imports a private module (`ray._private`) or reads a name that
starts with an underscore from these packages.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

# The versions whose private names this module was written for
WRITTEN_FOR = {"flwr": "1.42.0", "flwr-datasets": "0.6.1", "ray": "2.55.1", "datasets": "4.8.5"}
_said: list[bool] = []  # whether the versions were checked in this process


def version_mismatch(installed: dict[str, str] | None = None) -> str | None:
    """The one line that says which installed versions differ from WRITTEN_FOR (None:
    none does). `installed`: the versions to compare (default: this environment's)."""
    found = installed if installed is not None else _installed()
    differ = [
        f"{name} {found.get(name, 'missing')} (written for {wanted})"
        for name, wanted in WRITTEN_FOR.items()
        if found.get(name) != wanted
    ]
    if not differ:
        return None
    return (
        f"fedsim: warning: {', '.join(differ)}: the private names fedsim uses of them "
        f"({__name__}) may have changed"
    )


def _installed() -> dict[str, str]:
    found = {}
    for name in WRITTEN_FOR:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _checked() -> None:
    """Say once per process if the installed versions are not those written for."""
    if not _said:
        _said.append(True)
        if line := version_mismatch():
            print(line, file=sys.stderr, flush=True)


# --- Flower -----------------------------------------------------------------------------


def valid_replies(strategy: Any, replies: list[Any], is_train: bool) -> list[Any]:
    """The replies a Flower strategy aggregates: its own check (errors and malformed
    replies dropped, and logged), `Strategy._check_and_log_replies`."""
    _checked()
    valid, _ = strategy._check_and_log_replies(replies, is_train=is_train)
    return valid


def share_actors(
    take: Callable[[Any, int], list], give_back: Callable[[Any], None], built: list
) -> None:
    """Replace Flower's RayBackend `build` and `terminate`: a simulation's actor pool
    starts with the actors `take(backend, capacity)` hands over (fresh ones for the
    rest) and is appended to `built`; at its end `give_back(backend)` keeps its actors
    (fedsim.flower.shelf) instead of killing them."""
    _checked()
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool, ClientAppActor

    def build(self: RayBackend, app_fn: Callable) -> None:
        pool = BasicActorPool(ClientAppActor, self.client_resources, self.actor_kwargs)
        reused = take(self, pool.actors_capacity)
        pool.pool.extend(reused)
        pool.num_actors = len(reused)
        pool.add_actors_to_pool(pool.actors_capacity - len(reused))
        self.pool, self.app_fn = pool, app_fn
        built.append(pool)

    def terminate(self: RayBackend) -> None:
        give_back(self)

    RayBackend.build = build
    RayBackend.terminate = terminate


def pool_actors(pool: Any) -> list:
    """Every actor of a Flower actor pool, idle or running a job (those are kept only
    by their pending result, `BasicActorPool._future_to_actor`)."""
    _checked()
    return [*pool.pool, *pool._future_to_actor.values()]


@contextlib.contextmanager
def in_a_run() -> Iterator[None]:
    """Flower builds messages only inside a run (its ServerApp's task identity); outside
    the engine (a test's in-process loop) pretend to be in one
    (`flwr.supercore.task_identity.TaskIdentity`'s private fields)."""
    _checked()
    from flwr.supercore.task_identity import TaskIdentity

    fields = {"_task_id": 1, "_run_id": 1, "_node_id": 0}
    before = {name: getattr(TaskIdentity, name) for name in fields}
    for name, value in fields.items():
        setattr(TaskIdentity, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(TaskIdentity, name, value)


# --- flwr-datasets and datasets ---------------------------------------------------------


def partition_rows(partitioner: Any, natural: bool) -> dict[int, list[int]]:
    """A flwr-datasets partitioner's whole assignment, positions in its `dataset` by
    partition id: what each `load_partition` selects, read once
    (`_partition_id_to_indices`; NaturalIdPartitioner fills it on its first load,
    `_create_partition_id_to_indices`, with a progress bar kept off the console)."""
    _checked()
    partitioner.num_partitions  # noqa: B018 - computes the assignment
    if natural:
        with contextlib.redirect_stderr(io.StringIO()):
            partitioner._create_partition_id_to_indices()
    return partitioner._partition_id_to_indices


def fingerprint(dataset: Any) -> str:
    """What `datasets` itself says identifies a dataset's content (`Dataset._fingerprint`)."""
    _checked()
    return dataset._fingerprint


# --- Ray --------------------------------------------------------------------------------

RAY_WORKER_LOGGER = "ray._private.worker"  # the logger ray.init's notices come from
_lean: list[bool] = []


def lean_local_instance() -> None:
    """A private one-machine instance without the dashboard's API server, the
    autoscaler's monitor and the log monitor (Ray 2.55 starts all three even with
    include_dashboard=False, at a cost in start, shutdown and memory that
    docs/performance.md measures), whose processes are stopped at once (SIGKILL), not
    by a SIGTERM
    they block (`ray._private.node.Node`'s methods). Ray's two agents stay: the raylet
    dies without them. After a kill -9 of the driver they would wait 60 s for the dead
    GCS; 3 s is enough on one machine."""
    _checked()
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", "3")
    if _lean:
        return
    _lean.append(True)
    from ray._private.node import Node

    Node.start_api_server = lambda self, **kwargs: None
    Node.start_monitor = lambda self: None
    Node.start_log_monitor = lambda self: None
    kill_all_processes = Node.kill_all_processes

    def kill_at_once(self, check_alive=True, allow_graceful=False, wait=False):
        kill_all_processes(self, check_alive=check_alive, allow_graceful=False, wait=wait)

    Node.kill_all_processes = kill_at_once


def bootstrap_address(address: str) -> str | None:
    """The address `ray.init(address="auto")` would attach to (Ray's address file);
    raises what Ray raises when there is none (`ray._private.services`)."""
    _checked()
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address)


def local_raylet() -> tuple[int, str]:
    """The process id of this driver's local raylet, and the node's log folder
    (`ray._private.worker._global_node`)."""
    _checked()
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    return raylet, node.get_logs_dir_path()
