"""Run `simulate.py` with another client side, so a comparison differs in nothing else.

fedsim's runner builds the client app with `build_client_app(cfg, data)` and the
central evaluation with `CentralEvaluator(cfg, dataset)`; a benchmark variant replaces
those names in the runner and then goes through fedsim's own CLI: the same Ray start,
server loop, sampling, strategy, timings and result files.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from fedsim.front import cli
from fedsim.run import lifecycle


def simulate_with(
    build_client_app: Callable[..., Any], central_evaluator: Callable[..., Any] | None = None
) -> NoReturn:
    """`python simulate.py ARGS` with the given client app factory (and evaluator)."""
    lifecycle.build_client_app = build_client_app
    if central_evaluator is not None:
        lifecycle.CentralEvaluator = central_evaluator
    cli.entry(sys.argv[1:])
