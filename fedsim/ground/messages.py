"""What the server and the clients say to each other, as both sides name it: record
keys, client outcomes, one client's task and outcome, and a record's size and bytes.

Flower's strategies build one message per client and aggregate one reply per client;
the loop (fedsim.simulation) hands an exchange one ClientTask per client and gets one
ClientOutcome back, whatever carries them (fedsim.flower.bundles packs several clients
into one engine message). Algorithms name the keys too, so they live here, below both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from io import BytesIO

import numpy as np
from flwr.app import Array, ArrayRecord, MessageType, MetricRecord, RecordDict
from flwr.common import serde
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

# Keys of Flower's strategies (their defaults) and of fedsim's client metrics
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"
PROXIMAL_MU = "proximal-mu"  # FedProx's configure_train sends it
TRAIN_LOSS = "train_loss"
EVAL_LOSS = "eval_loss"
EVAL_ACCURACY = "eval_accuracy"
# A personal algorithm's client: its personalised model on its held-out examples
PERSONAL_LOSS = "personal_loss"
PERSONAL_ACCURACY = "personal_accuracy"
DP_EPSILON = "dp_epsilon"  # privacy spent so far (fedsim.algorithms.privacy reports it)
PARTITION_ID = "partition-id"  # node config of a SuperNode with its own data

# A phase of a round as clients.csv and the console name it, by Flower's message type
PHASES = {MessageType.TRAIN: "train", MessageType.EVALUATE: "evaluate"}
UNSEEN = "unseen"  # clients.csv's phase of a held-out client's evaluation (--holdout-clients)

# Client outcomes, as clients.csv reports them
OK = "ok"
FAILED = "failed"  # the client raised
TIMEOUT = "timeout"  # no answer by --round-timeout
DROPOUT = "dropout"  # --client-failure-rate decided it drops out
STRAGGLER = "straggler"  # trained, but its update came too late on the simulated clock
STATUSES = (OK, FAILED, TIMEOUT, DROPOUT, STRAGGLER)
FAILURES = (FAILED, TIMEOUT, DROPOUT)  # what clients_failed counts; stragglers are apart

# The server's note on a buffered asynchronous update (FedBuff): how many server updates
# happened while the client trained. A ConfigRecord, which Flower's reply checks ignore.
STALENESS = "fedsim.staleness"


def recorddict_bytes(content: RecordDict) -> int:
    """The serialized size of a RecordDict as Flower sends it over the wire (protobuf)."""
    return serde.recorddict_to_proto(content).ByteSize()


def to_bytes(record: RecordDict) -> bytes:
    """Flower's own serialization (protobuf): exact, and independent of pickling."""
    return serde.recorddict_to_proto(record).SerializeToString()


def from_bytes(blob: bytes) -> RecordDict:
    proto = ProtoRecordDict()
    proto.ParseFromString(blob)
    return serde.recorddict_from_proto(proto)


# An Array's data is what np.save writes: a header, then the array's bytes in C order.
# Flower reads it with np.load and writes it with np.save, whose header parsing and
# building (ast.literal_eval, dict formatting) cost more than the copy of a small
# model's tensors; a client with a memory (SCAFFOLD) converts several records a round.
# These two give the same arrays and the same bytes, and defer to Flower's own
# conversion for anything else (Fortran order, another stype).
_C_ORDER = b"'fortran_order': False"


def ndarrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays, writable, as `Array.numpy()` gives them."""
    return {key: _ndarray(array) for key, array in record.items()}


def _ndarray(array: Array) -> np.ndarray:
    dtype = np.dtype(array.dtype)
    count = int(np.prod(array.shape))
    start = len(array.data) - count * dtype.itemsize
    if array.stype != "numpy.ndarray" or start < 0 or _C_ORDER not in array.data[:start]:
        return array.numpy()
    flat = np.frombuffer(array.data, dtype=dtype, count=count, offset=start)
    return flat.reshape(array.shape).copy()


def array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of these arrays, byte for byte what `ArrayRecord(arrays)` holds."""
    return ArrayRecord({key: _array(value) for key, value in arrays.items()})


def _array(value: np.ndarray) -> Array:
    if not value.flags.c_contiguous:
        return Array.from_numpy_ndarray(value)
    data = _npy_header(value.dtype.str, value.shape) + value.tobytes()
    return Array(dtype=str(value.dtype), shape=tuple(value.shape), stype="numpy.ndarray", data=data)


@cache
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """np.save's header for a C-ordered array of this dtype and shape."""
    empty = np.zeros(shape, dtype=dtype)
    buffer = BytesIO()
    np.save(buffer, empty, allow_pickle=False)
    return buffer.getvalue()[: len(buffer.getvalue()) - empty.nbytes]


@dataclass
class ClientTask:
    """One client's task: what the strategy sent it, its memory, and how much work it
    is (examples × epochs; an exchange may use it to balance its load)."""

    pid: int
    content: RecordDict
    state: RecordDict = field(default_factory=RecordDict)
    work: float = 1.0


@dataclass
class ClientOutcome:
    """What became of one client's task."""

    pid: int
    status: str
    seconds: float = 0.0  # the client's own compute time, measured where it ran
    bytes_up: int = 0  # serialized size of `content`: what a device would upload
    measured_in: float = 0.0  # seconds it took to measure bytes_up (recording's own cost)
    content: RecordDict | None = None  # the reply its strategy aggregates
    state: RecordDict | None = None  # its memory after this round (None: unchanged)
    error: str = ""


def train_reply(arrays: ArrayRecord, metrics: dict[str, float | int]) -> RecordDict:
    """What Flower's strategies expect from a training client: one ArrayRecord and one
    MetricRecord holding the example count they weigh it by."""
    return RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})
