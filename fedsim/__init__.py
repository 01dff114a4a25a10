"""fedsim: federated-learning simulation on CIFAR-10 through Flower's Ray engine, as a
command (simulate.py) and a library (`fedsim.run`, `fedsim.sweep`: fedsim.front.api)."""

import os

# Offline by default, set before any submodule imports Flower, flwr-datasets or Ray
# (they read these once): none of them may try to report usage.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # --mlflow
# Ray's API starts a fresh default Ray when called after a shutdown (ray.get in a thread
# Flower's engine left behind): fail instead, a hang or a stray cluster is worse.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
# Ray's future default (fedsim picks each client's device itself); setting it also
# silences Ray's warning about the change.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

__version__ = "0.1.0"

# The library's names (fedsim.front.api), imported when first used: `import fedsim` stays
# light, and simulate.py's option parsing does not import torch
_EXPORTS = {
    "run": "fedsim.front.api",
    "resume": "fedsim.front.api",
    "sweep": "fedsim.front.api",
    "Result": "fedsim.front.api",
    "option_names": "fedsim.front.api",
    "Algorithm": "fedsim.algorithms.base",
    "Option": "fedsim.ground.option",
    "Bounds": "fedsim.ground.option",
    "ConfigError": "fedsim.ground.errors",
    "RunEnded": "fedsim.ground.errors",
    "RunAborted": "fedsim.ground.errors",
    "Diverged": "fedsim.ground.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fedsim' has no attribute {name!r}")
    import importlib

    from fedsim.ground import interrupts

    with interrupts.held():  # Ctrl-C during the import lands after it (fedsim.ground.interrupts)
        return getattr(importlib.import_module(_EXPORTS[name]), name)
