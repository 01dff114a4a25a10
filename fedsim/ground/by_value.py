"""The user's own code kept by value: a model factory or an algorithm class defined
where no other process can import it by name (a notebook's cell, a script's
`__main__`, a lambda or a function inside a function).

`fedsim.run(model=factory)` pickles such code with Ray's cloudpickle (which pickles it
by value, its code and what it refers to in `__main__`) into this machine's cache,
keyed by the pickle's SHA-256, and names it `fedsim.ground.by_value:c<hash>`. From
then on it is user code like any other (fedsim.ground.imports): every process of this
machine — the client actors, a later `--resume`, the command line — imports that name
and gets the object unpickled (this module's `__getattr__`), once the file is checked
against the hash in its name (an emptied or damaged file is refused, and written again
whenever the code itself is passed again). Other machines of a Ray
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
    key = _key(data)
    path = folder() / f"{key}.pkl"
    if not _intact(path, key):  # missing, or emptied or damaged since: written again
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(temporary(path.name))
        partial.write_bytes(data)
        os.replace(partial, path)
    return f"{__name__}:{PREFIX}{key}"


def __getattr__(name: str) -> Any:
    """`c<hash>`: the code kept under that hash, unpickled once per process."""
    if not name.startswith(PREFIX) or name.startswith("__"):
        raise AttributeError(name)
    key = name[len(PREFIX) :]
    path = folder() / f"{key}.pkl"
    try:
        data = path.read_bytes()
    except OSError:
        raise AttributeError(
            f"{name} (code defined in a notebook or __main__ is kept in {folder()}, and "
            "this machine has no such file: define it in a module)"
        ) from None
    if _key(data) != key:
        raise AttributeError(
            f"{name}: {path} is damaged (its content is not what its name says); pass the "
            "code itself again (fedsim.run(model=...) writes it anew), or define it in a module"
        )
    code = pickle.loads(data)
    globals()[name] = code
    return code


def _key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HEX_DIGITS]


def _intact(path: Path, key: str) -> bool:
    try:
        return _key(path.read_bytes()) == key
    except OSError:
        return False
