"""fedsim: federated-learning simulation on CIFAR-10 through Flower's Ray engine."""

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
