"""The user's own code, named `package.module:attribute` (--model, --strategy).

Such a name is imported from where Python finds modules, plus the current directory
(where a researcher keeps `my_model.py`; `python simulate.py` from elsewhere would not
see it otherwise). Ray's local workers get the driver's current directory on their
path too, so the same name imports in every client process; on a cluster Ray ships
the user's own module (or its top-level package) to every node (`shipped`), while an
installed package must be installed there too (docs/extending.md). Code that has no
module to be imported from (a notebook's) is kept by value (fedsim.ground.by_value).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

from fedsim.ground import by_value
from fedsim.ground.errors import ConfigError


def is_path(value: object) -> bool:
    """Whether an option's value names user code (`module:attribute`) rather than a
    registered name."""
    return isinstance(value, str) and ":" in value


USER_CODE_OPTIONS = ("model", "strategy")  # the options whose value may name user code


def named(cfg: Any) -> dict[str, str]:
    """The run's options that name user code, with the `module:attribute` each names."""
    values = {name: getattr(cfg, name) for name in USER_CODE_OPTIONS}
    return {name: value for name, value in values.items() if is_path(value)}


def shipped(paths: list[str]) -> list[str]:
    """Where the user's own modules among `paths` live, to be shipped to a cluster's
    nodes (Ray's runtime_env `py_modules`): each one's top-level package folder, or
    its file for a lone module. Installed packages (site-packages, the standard
    library) and fedsim itself are not the user's folder's: a cluster installs those."""
    keys = ("stdlib", "purelib", "platlib")
    installed = [Path(sysconfig.get_path(key)).resolve() for key in keys]
    found: list[str] = []
    for path in paths:
        top = path.partition(":")[0].partition(".")[0]
        spec = importlib.util.find_spec(top)
        if top == __name__.partition(".")[0] or spec is None or spec.origin is None:
            continue
        if not spec.origin.endswith(".py"):
            continue  # an extension module: nothing to zip
        origin = Path(spec.origin).resolve()
        location = origin.parent if spec.submodule_search_locations else origin
        if any(location.is_relative_to(root) for root in installed):
            continue
        if str(location) not in found:
            found.append(str(location))
    return found


def resolve(path: str) -> Any:
    """The object `module:attribute` names (the attribute may be dotted: `Outer.Inner`),
    for the registries' own entries and the user's alike; raises what importing and
    looking up raise."""
    module_name, _, attribute = path.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def load(path: str, option: str) -> Any:
    """The object the user's `module:attribute` names, found from the current directory
    too; ConfigError (one line) if it cannot be had."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(option, f"{path!r} is not package.module:attribute")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        importlib.import_module(module_name)
    except Exception as error:  # a missing module, or one that fails as it imports
        raise ConfigError(
            option, f"cannot import {module_name!r}: {type(error).__name__}: {error}"
        ) from None
    try:
        return resolve(path)
    except AttributeError as error:
        said = str(error) if module_name == by_value.__name__ else ""
        raise ConfigError(
            option, f"module {module_name!r} has no {said or repr(attribute)}"
        ) from None


def source(path: str) -> dict[str, str]:
    """Where `module:attribute` comes from, for config.json: the module's file and the
    SHA-256 of its text (a later run with changed code is told apart)."""
    module = sys.modules.get(path.partition(":")[0])
    file = getattr(module, "__file__", None)
    if module is by_value:  # the code itself is the pickle, named by its hash
        return {"name": path, "kept_by_value_in": str(by_value.folder())}
    if file is None:
        return {"name": path}
    text = Path(file).read_bytes()
    return {
        "name": path,
        "file": str(Path(file).resolve()),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
