"""Command line -> validated RunConfig(s) -> runs. Bad input: one line, exit code 2."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.flower.engine import STOP_SIGNALS
from fedsim.front import sweep
from fedsim.ground.config import RunConfig, fields, flag, shown, value_type
from fedsim.ground.errors import ConfigError, RunEnded
from fedsim.simulation.profiles import load_profiles

_TYPES = typing.get_type_hints(RunConfig)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError("usage", message)


def _convert(name: str, text: str) -> Any:
    kind = value_type(name)
    optional = isinstance(_TYPES[name], types.UnionType)
    if optional and text.strip().lower() in ("auto", "none", ""):
        return None
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(flag(name), f"must be {noun}, got {text!r}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="simulate.py",
        description="Federated learning on CIFAR-10 through Flower's simulation engine. "
        "Numeric and choice options take a comma list (--clients 2,4,8) to sweep a grid "
        "into results/<experiment>/.",
    )
    parser.add_argument(
        "--experiment",
        metavar="FILE",
        help="run the grid in a TOML file (options given here override it); "
        "--name names the experiment folder (default: the file's name)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="go on with an interrupted run from its last completed round "
        "(with --rounds: extend it)",
    )
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="only redraw summary.csv and the plots of results/<experiment> from its CSVs "
        "(with --target-accuracy: the time to reach it)",
    )
    for f in fields():
        if value_type(f.name) is bool:
            parser.add_argument(
                flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})",
            )
        else:
            parser.add_argument(
                flag(f.name),
                metavar=f.name.upper(),
                default=None,
                help=f"{f.metadata['help']} (default: {shown(f.name, f.default)})",
            )
    return parser


def given_options(args: argparse.Namespace) -> sweep.Grid:
    """The run options set on the command line; numeric and choice ones may be lists."""
    given: sweep.Grid = {}
    for f in fields():
        raw = getattr(args, f.name)
        if raw is None:
            continue
        if isinstance(raw, bool) or (value_type(f.name) is str and "choices" not in f.metadata):
            given[f.name] = [raw]
        else:
            given[f.name] = [_convert(f.name, part.strip()) for part in raw.split(",")]
    return given


def _interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C, SIGTERM or SIGHUP stops the run; later ones are ignored, so
    that they cannot cut short the shutdown that the first one started (Ray's processes
    would be left behind)."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None, exiting: bool = False) -> int:
    started = time.perf_counter()
    for stop in STOP_SIGNALS:
        signal.signal(stop, _interrupt)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        given = given_options(args)
        if args.resume:
            _resume(args, given, started)
            return 0
        if args.plot:
            if set(given) - {"target_accuracy"} or args.experiment:
                raise ConfigError(
                    "--plot",
                    "takes the experiment folder alone, no run options (but --target-accuracy)",
                )
            from fedsim.front import plots

            plots.report(Path(args.plot), given.get("target_accuracy", [None])[0])
            return 0
        experiment = sweep.plan_from(args.experiment, given)
        if experiment is not None:
            from fedsim.front.experiment import run_experiment

            run_experiment(experiment)
            return 0
        (cfg,) = sweep.expand([given])
        load_profiles(cfg)  # a bad profiles file is refused before Ray starts
        from fedsim.flower import engine  # light: Ray is imported in its own thread

        ray = engine.RayStarter(cfg)  # starts while the heavy imports (torch, flwr) run
        _runner().run(cfg, started, ray, exiting=exiting)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsim: interrupted; completed rounds are kept (--resume goes on)", file=sys.stderr)
        _exit_now(130)
    except RunEnded as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def entry(argv: Sequence[str] | None = None) -> typing.NoReturn:
    """`python simulate.py`: main(), then leave. Once Ray has run in this process, leave
    at once (every result file is fsynced and closed by then): threads Flower's engine
    left blocked on actors would otherwise hold the interpreter's exit."""
    code = main(argv, exiting=True)
    if "ray" in sys.modules:
        # Not ray.shutdown(): Flower's engine thread may still be winding down, and a
        # call it makes into a shut-down Ray ends the process with status 1. Ray's
        # processes get the parent-death signal as this process ends (RayStarter); a
        # run on a cluster fedsim did not start has disconnected already (runner.run).
        _leave(code)
    raise SystemExit(code)


def _exit_now(code: int) -> None:
    """After Ctrl-C every result file is fsynced and closed; stop Ray (a no-op when the
    run already did, needed when the interrupt came while Ray was starting), then leave
    at once, since threads Flower's engine left blocked (or starts while it winds down)
    would otherwise hold the interpreter's exit indefinitely."""
    if "ray" in sys.modules:
        from fedsim.flower import engine

        engine.stop_ray(wait=0)  # the loop was cut short: its thread need not end soon
    _leave(code)


def _leave(code: int) -> typing.NoReturn:
    if "ray" in sys.modules:
        from fedsim.flower import engine

        engine.end_raylet_children()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _runner():
    from fedsim.run import lifecycle

    return lifecycle


def _resume(args: argparse.Namespace, given: sweep.Grid, started: float) -> None:
    """A resumed run keeps its stored config; only --rounds may change (to extend it)."""
    others = [flag(name) for name in given if name != "rounds"]
    others += ["--plot"] * bool(args.plot) + ["--experiment"] * bool(args.experiment)
    if others:
        raise ConfigError(
            "--resume", f"takes a run folder and at most --rounds; drop {', '.join(others)}"
        )
    if len(given.get("rounds", [])) > 1:
        raise ConfigError("--resume", "takes one --rounds value, not a list")
    _runner().resume(Path(args.resume), given.get("rounds", [None])[0], started)
