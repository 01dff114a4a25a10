"""The server's state as plain tensors and values: what checkpoint.pt keeps of a strategy
(FedAvgM's momentum, FedAdam's moments, SCAFFOLD's control variate, a DP wrapper's
clipping norm, the privacy accountant's rounds), never the object itself.

A pickled strategy would tie a checkpoint to the classes that made it: a resume after
a Flower upgrade, or from another fedsim version, could fail or load something else.
Instead a resume builds the strategy afresh from the run's config, as the run began,
and puts back the values its attributes held (`restore`). The state is the
attributes' values, walked down through the objects a strategy holds (a DP wrapper's
strategy, the accountant): numbers, strings, NumPy and torch arrays, ArrayRecords,
and lists, tuples and dicts of them. Functions (a strategy's metric aggregation) come
from the fresh build, as do a class's `NOT_SAVED` attributes (what it derives from
the others, as the accountant's RDP ledger). Anything else is refused when the run
starts (fedsim.runner.lifecycle.check_server_side), not when its first checkpoint is
written. Everything here loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

# A saved value's kind, where it is not a plain value: the key of a one-key dict
NDARRAY, NPSCALAR, TENSOR, ARRAYS, LIST, TUPLE, DICT, OBJECT = (
    "__ndarray__",
    "__npscalar__",
    "__tensor__",
    "__arrayrecord__",
    "__list__",
    "__tuple__",
    "__dict__",
    "__object__",
)
PLAIN = (bool, int, float, str, type(None))
SKIPPED = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, type)


class Unsaveable(TypeError):
    """A value the state cannot hold (named by its path from the strategy)."""


def state_of(strategy: Any) -> dict:
    """The state of a strategy (and of what it holds), as tensors and plain values;
    Unsaveable names the first value it cannot hold."""
    own = type(strategy).__module__.partition(".")[0]
    return _object(strategy, type(strategy).__name__, ("fedsim", "flwr", own))


def restore(strategy: Any, state: dict) -> None:
    """Put `state` (state_of's) back into `strategy`, a fresh build of the same kind."""
    _restore_object(strategy, state, type(strategy).__name__)


def _object(obj: Any, path: str, owners: tuple[str, ...]) -> dict:
    skipped = set(getattr(type(obj), "NOT_SAVED", ()))
    attributes = {
        name: _encode(value, f"{path}.{name}", owners)
        for name, value in vars(obj).items()
        if name not in skipped and not isinstance(value, SKIPPED)
    }
    return {OBJECT: type(obj).__qualname__, "state": attributes}


def _encode(value: Any, path: str, owners: tuple[str, ...]) -> Any:
    if isinstance(value, PLAIN):
        return value
    if isinstance(value, np.ndarray):
        return {NDARRAY: _tensor(value)}
    if isinstance(value, np.generic):
        return {NPSCALAR: [value.dtype.str, value.item()]}
    if isinstance(value, torch.Tensor):
        return {TENSOR: value.detach().cpu().clone()}
    if isinstance(value, ArrayRecord):
        return {ARRAYS: {key: _tensor(array.numpy()) for key, array in value.items()}}
    if isinstance(value, list | tuple):
        items = [_encode(v, f"{path}[{i}]", owners) for i, v in enumerate(value)]
        return {LIST if isinstance(value, list) else TUPLE: items}
    if isinstance(value, dict):
        if not all(isinstance(key, str | int) for key in value):
            raise Unsaveable(f"{path}: a dict whose keys are not names or numbers")
        return {DICT: [[key, _encode(v, f"{path}[{key!r}]", owners)] for key, v in value.items()]}
    if type(value).__module__.partition(".")[0] in owners and hasattr(value, "__dict__"):
        return _object(value, path, owners)  # a wrapped strategy, the accountant
    raise Unsaveable(f"{path}: a {type(value).__module__}.{type(value).__qualname__}")


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor holding the array's values in its own dtype (unsigned ints torch lacks
    ops for are widened, and narrowed back by `_array`)."""
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        return {"dtype": array.dtype.str, "values": torch.from_numpy(array.astype(np.int64))}
    return torch.from_numpy(np.array(array, copy=True))


def _array(stored: Any) -> np.ndarray:
    if isinstance(stored, dict):
        return stored["values"].numpy().astype(np.dtype(stored["dtype"]))
    return stored.numpy()


def _decode(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    ((kind, inner),) = value.items() if len(value) == 1 else ((None, None),)
    if kind == NDARRAY:
        return _array(inner)
    if kind == NPSCALAR:
        dtype, item = inner
        return np.dtype(dtype).type(item)
    if kind == TENSOR:
        return inner
    if kind == ARRAYS:
        return ArrayRecord({key: Array(_array(values)) for key, values in inner.items()})
    if kind == LIST:
        return [_decode(v) for v in inner]
    if kind == TUPLE:
        return tuple(_decode(v) for v in inner)
    if kind == DICT:
        return {key: _decode(v) for key, v in inner}
    raise ValueError(f"not a saved value: {sorted(value)}")


def _restore_object(obj: Any, state: dict, path: str) -> None:
    kind = state.get(OBJECT)
    if kind != type(obj).__qualname__:
        raise ValueError(f"{path} is a {type(obj).__qualname__} here, a {kind} in the checkpoint")
    for name, value in state["state"].items():
        if isinstance(value, dict) and OBJECT in value:
            _restore_object(getattr(obj, name), value, f"{path}.{name}")
        else:
            setattr(obj, name, _decode(value))
