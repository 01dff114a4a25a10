"""The user's own code kept by value: a model factory or an algorithm class defined
where no other process can import it by name (a notebook's cell, a script's
`__main__`, a lambda or a function inside a function).

`fedsim.run(model=factory)` pickles such code with Ray's cloudpickle (which pickles it
by value, its code and what it refers to in `__main__`) into this machine's cache,
keyed by the pickle's SHA-256, and names it `fedsim.ground.by_value:c<hash>`. From
then on it is user code like any other (fedsim.ground.imports): every process of this
machine — the client actors, a later `--resume`, the command line — imports that name
and gets the object unpickled (this module's `__getattr__`). Other machines of a Ray
cluster do not share the cache: there, put the code in a module, which Ray ships.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

from fedsim.ground.files import cache_root, temporary

PREFIX = "c"  # an attribute name starts with a letter
HEX_DIGITS = 32  # of the pickle's SHA-256 in the name: 128 bits


def folder() -> Path:
    return cache_root() / "user_code"


def keep(code: Any) -> str:
    """Pickle `code` by value into the cache (once per content); the `module:attribute`
    name every process of this machine imports it by."""
    from ray import cloudpickle

    data = cloudpickle.dumps(code)
    key = hashlib.sha256(data).hexdigest()[:HEX_DIGITS]
    path = folder() / f"{key}.pkl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(temporary(path.name))
        partial.write_bytes(data)
        os.replace(partial, path)
    return f"{__name__}:{PREFIX}{key}"


def __getattr__(name: str) -> Any:
    """`c<hash>`: the code kept under that hash, unpickled once per process."""
    if not name.startswith(PREFIX) or name.startswith("__"):
        raise AttributeError(name)
    path = folder() / f"{name[len(PREFIX) :]}.pkl"
    try:
        data = path.read_bytes()
    except OSError:
        raise AttributeError(
            f"{name} (code defined in a notebook or __main__ is kept in {folder()}, and "
            "this machine has no such file: define it in a module)"
        ) from None
    code = pickle.loads(data)
    globals()[name] = code
    return code
