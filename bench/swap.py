"""Run `simulate.py` with another client side, so a comparison differs in nothing else.

fedsim's lifecycle takes the client app and the central evaluation as seams
(fedsim.runner.assembly.Seams); a benchmark variant passes its own and then goes through
fedsim's own CLI: the same Ray start, round loop, sampling, strategy, timings and
result files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from fedsim.front import cli
from fedsim.learning.training import CentralEvaluator
from fedsim.runner.assembly import Seams


def simulate_with(
    build_client_app: Callable[..., Any], central_evaluator: Callable[..., Any] | None = None
) -> NoReturn:
    """`python simulate.py ARGS` with the given client app factory (and evaluator)."""
    seams = Seams(client_app=build_client_app, evaluator=central_evaluator or CentralEvaluator)
    cli.entry(sys.argv[1:], seams)
