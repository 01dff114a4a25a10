"""Each private name of Flower, flwr-datasets, datasets and Ray that fedsim uses
(fedsim.ground.insides), checked against the installed packages: an upgrade that
renames or changes one fails here, by name, before it fails a run."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedsim.ground import insides


def test_the_installed_versions_are_those_written_for() -> None:
    assert insides.version_mismatch() is None
    said = insides.version_mismatch({**insides.WRITTEN_FOR, "ray": "2.60.0"})
    assert said == (
        "fedsim: warning: ray 2.60.0 (written for 2.55.1): the private names fedsim uses "
        "of them (fedsim.ground.insides) may have changed"
    )


def test_a_strategys_own_check_of_its_replies(in_a_run) -> None:
    """Strategy._check_and_log_replies: valid replies kept, an error reply dropped."""
    from flwr.app import Error
    from flwr.serverapp.strategy import FedAvg

    sent = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.zeros(2, np.float32)]),
            "metrics": MetricRecord({"num-examples": 3}),
        }
    )
    good = Message(content, reply_to=sent)
    bad = Message(Error(code=0, reason="no"), reply_to=sent)
    assert insides.valid_replies(FedAvg(), [good, bad], is_train=True) == [good]


def test_flowers_ray_backend_has_the_methods_fedsim_replaces() -> None:
    """RayBackend.build and .terminate, the pool fedsim builds as Flower does, and the
    pool's record of its busy actors."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    assert list(inspect.signature(RayBackend.build).parameters) == ["self", "app_fn"]
    assert list(inspect.signature(RayBackend.terminate).parameters) == ["self"]
    built = inspect.getsource(RayBackend.build)
    assert "BasicActorPool(" in built and "self.pool" in built and "self.app_fn" in built
    pool = inspect.getsource(BasicActorPool)
    assert "self._future_to_actor: dict" in pool and "self.pool: list" in pool
    assert "def add_actors_to_pool" in pool and "self.actors_capacity" in pool


def test_the_task_identity_flower_builds_messages_in() -> None:
    from flwr.supercore.task_identity import TaskIdentity

    before = {name: getattr(TaskIdentity, name) for name in ("_task_id", "_run_id", "_node_id")}
    with insides.in_a_run():
        message = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
        assert message.metadata.run_id == 1
    assert {name: getattr(TaskIdentity, name) for name in before} == before


@pytest.mark.parametrize("natural", [False, True], ids=["dirichlet", "natural"])
def test_a_partitioners_assignment_is_what_it_loads(natural: bool) -> None:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, NaturalIdPartitioner

    rng = np.random.default_rng(0)
    table = {"label": rng.integers(0, 4, 200), "group": rng.integers(0, 5, 200)}
    if natural:
        partitioner = NaturalIdPartitioner(partition_by="group")
    else:
        partitioner = DirichletPartitioner(5, "label", alpha=0.5, seed=3)
    partitioner.dataset = Dataset.from_dict(table)
    assigned = insides.partition_rows(partitioner, natural=natural)
    for pid in range(partitioner.num_partitions):
        loaded = partitioner.load_partition(pid)
        expected = partitioner.dataset.select(assigned[pid])
        assert loaded["label"] == expected["label"] and loaded["group"] == expected["group"]


def test_a_datasets_fingerprint() -> None:
    from datasets import Dataset

    one, same = Dataset.from_dict({"a": [1, 2]}), Dataset.from_dict({"a": [1, 2]})
    assert insides.fingerprint(one) == insides.fingerprint(same)
    assert insides.fingerprint(one) != insides.fingerprint(Dataset.from_dict({"a": [1, 3]}))


def test_rays_node_has_the_switches_and_the_stop_fedsim_changes() -> None:
    from ray._private.node import Node

    for name in ("start_api_server", "start_monitor", "start_log_monitor"):
        assert callable(getattr(Node, name)), name
    stop = inspect.signature(Node.kill_all_processes).parameters
    assert {"check_alive", "allow_graceful", "wait"} <= set(stop)


def test_rays_address_file_and_local_node() -> None:
    """canonicalize_bootstrap_address (no cluster here: it raises), and where the
    driver's node and its raylet are known (the raylet's pid is read in a real run,
    tests/test_faults.py)."""
    from ray._private import ray_constants, services, worker

    assert "addr" in inspect.signature(services.canonicalize_bootstrap_address).parameters
    assert hasattr(worker, "_global_node") and ray_constants.PROCESS_TYPE_RAYLET == "raylet"
    import logging

    assert logging.getLogger(insides.RAY_WORKER_LOGGER).name == worker.__name__


def test_flowers_backend_hands_its_actors_to_fedsim(monkeypatch) -> None:
    """share_actors: a simulation's end gives its own backend back (terminate, called as
    Flower calls it, on the backend)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    for name in ("build", "terminate"):  # put back after the test
        monkeypatch.setattr(RayBackend, name, getattr(RayBackend, name))
    given: list = []
    insides.share_actors(lambda backend, capacity: [], given.append, [])
    backend = object.__new__(RayBackend)
    backend.terminate()
    assert given == [backend]
