"""Command line -> validated RunConfig(s) -> runs. Bad input: one line, exit code 2.

Every option comes from the catalog (fedsim.runner.options): RunConfig's own, grouped by
concern in `--help`, and each algorithm's, under its name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim import algorithms
from fedsim.flower.ray_instance import STOP_SIGNALS
from fedsim.front import sweep
from fedsim.ground.errors import ConfigError, ConsoleClosed, RunEnded
from fedsim.ground.option import ALGORITHM, GROUPS, Option, flag
from fedsim.runner import options
from fedsim.simulation.profiles import check_profiles

if TYPE_CHECKING:
    from fedsim.runner.assembly import Seams


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError("usage", message)


def _convert(option: Option, text: str) -> Any:
    if option.optional and text.strip().lower() in ("auto", "none", ""):
        return None
    try:
        if option.type is int:
            return int(text)
        if option.type is float:
            return float(text)
    except ValueError:
        noun = "an integer" if option.type is int else "a number"
        raise ConfigError(flag(option.name), f"must be {noun}, got {text!r}") from None
    return text


def _listable(option: Option) -> bool:
    """Whether a comma list of its values is a sweep: numbers and choices, not paths."""
    return option.type in (int, float) or options.choices(option.name) is not None


def _add(group: argparse._ArgumentGroup, option: Option, note: str = "") -> None:
    if option.type is bool:
        default = "on" if option.default else "off"
        group.add_argument(
            flag(option.name),
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{option.help}{note} (default: {default})",
        )
        return
    allowed = options.choices(option.name)
    listed = f"; one of {', '.join(map(str, allowed))}" if allowed else ""
    group.add_argument(
        flag(option.name),
        metavar=option.name.upper(),
        default=None,
        help=f"{option.help}{listed}{note} (default: {option.shown(option.default)})",
    )


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The options of every registered algorithm, and of a user's (`--strategy
    my_algos:FedFoo` in `argv`: its options then show in --help and parse)."""
    _admit_user_code(argv)
    parser = _Parser(
        prog="simulate.py",
        description="Federated learning on CIFAR-10 (or your own images) through Flower's "
        "simulation engine. Numeric and choice options take a comma list (--clients 2,4,8) "
        "to sweep a grid into results/<experiment>/.",
    )
    runs = parser.add_argument_group("runs and experiments")
    runs.add_argument(
        "--experiment",
        metavar="FILE",
        help="run the grid in a TOML file (options given here override it); "
        "--name names the experiment folder (default: the file's name)",
    )
    runs.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="go on with an interrupted run from its last completed round "
        "(with --rounds: extend it)",
    )
    runs.add_argument(
        "--accept-changed-code",
        action="store_true",
        help="with --resume: go on although the run's own --model or --strategy module "
        "changed since it began (recorded in config.json); refused otherwise",
    )
    runs.add_argument(
        "--plot",
        metavar="DIR",
        help="only redraw summary.csv and the plots of results/<experiment> from its CSVs "
        "(with --target-accuracy: the time to reach it)",
    )
    catalog, owners = options.every(), options.owners()
    core = [option for name, option in catalog.items() if name not in owners]
    for concern in GROUPS:
        group = parser.add_argument_group(concern)
        for option in core:
            if option.group == concern:
                _add(group, option)
        if concern == ALGORITHM:
            _algorithm_groups(parser, catalog, owners)
    return parser


def _admit_user_code(argv: Sequence[str]) -> None:
    """Register the user's own code that `argv` names (options.admit), before the
    parser is built from the catalog."""
    for index, arg in enumerate(argv):
        for name in options.USER_CODE:
            if arg == flag(name) and index + 1 < len(argv):
                value = argv[index + 1]
            elif arg.startswith(f"{flag(name)}="):
                value = arg.partition("=")[2]
            else:
                continue
            for part in value.split(","):
                options.admit(name, part.strip())


def _algorithm_groups(
    parser: argparse.ArgumentParser, catalog: dict[str, Option], owners: dict[str, tuple]
) -> None:
    """Each algorithm's own options under its name; one several algorithms declare
    appears under the first, naming them all."""
    added: set[str] = set()
    for name in algorithms.ALGORITHMS:
        cls = algorithms.algorithm_class(name)
        mine = [option for option in cls.options() if option.name not in added]
        if not mine:
            continue
        group = parser.add_argument_group(f"--strategy {name}", f"{cls.source}")
        for option in mine:
            shared = owners[option.name]
            note = f" ({', '.join(shared)})" if len(shared) > 1 else ""
            _add(group, catalog[option.name], note)
            added.add(option.name)


def given_options(args: argparse.Namespace) -> sweep.Grid:
    """The run options set on the command line; numeric and choice ones may be lists."""
    given: sweep.Grid = {}
    for name, option in options.every().items():
        raw = getattr(args, name)
        if raw is None:
            continue
        if isinstance(raw, bool) or not _listable(option):
            given[name] = [raw]
        else:
            given[name] = [_convert(option, part.strip()) for part in raw.split(",")]
    return given


def _interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C, SIGTERM or SIGHUP stops the run; later ones are ignored, so
    that they cannot cut short the shutdown that the first one started (Ray's processes
    would be left behind)."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(
    argv: Sequence[str] | None = None, exiting: bool = False, seams: Seams | None = None
) -> int:
    """simulate.py with `argv`; `seams` replace parts of the runs (tests, benchmarks)."""
    started = time.perf_counter()
    for stop in STOP_SIGNALS:
        signal.signal(stop, _interrupt)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
        given = given_options(args)
        if args.accept_changed_code and not args.resume:
            raise ConfigError("--accept-changed-code", "goes with --resume RUN_DIR")
        if args.resume:
            _resume(args, given, started, seams)
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

            run_experiment(experiment, seams)
            return 0
        (cfg,) = sweep.expand([given])
        check_profiles(cfg)  # a bad profiles file is refused before Ray starts
        from fedsim.flower import ray_instance  # light: Ray is imported in its own thread

        ray = ray_instance.RayStarter(cfg)  # starts while the heavy imports (torch, flwr) run
        lifecycle = _lifecycle()
        lifecycle.run(cfg, started, ray, exiting=exiting, seams=seams)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ConsoleClosed, BrokenPipeError) as stop:  # BrokenPipe: said here
        why = "interrupted" if isinstance(stop, KeyboardInterrupt) else "its console was closed"
        with contextlib.suppress(OSError):  # stderr may have gone with stdout
            print(f"fedsim: {why}; completed rounds are kept (--resume goes on)", file=sys.stderr)
        _exit_now(130)
    except RunEnded as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def entry(argv: Sequence[str] | None = None, seams: Seams | None = None) -> typing.NoReturn:
    """`python simulate.py`: main(), then leave. Once Ray has run in this process, leave
    at once (every result file is fsynced and closed by then), even after an error main
    did not expect: threads Flower's engine left blocked on actors would otherwise hold
    the interpreter's exit for good."""
    try:
        code = main(argv, exiting=True, seams=seams)
    except Exception:  # a fault of fedsim's: its traceback, then leave as below
        if "ray" not in sys.modules:
            raise
        with contextlib.suppress(OSError):
            traceback.print_exc()
        code = 1
    if "ray" in sys.modules:
        # Not ray.shutdown(): Flower's engine thread may still be winding down, and a
        # call it makes into a shut-down Ray ends the process with status 1. Ray's
        # processes get the parent-death signal as this process ends (RayStarter); a
        # run on a cluster fedsim did not start has disconnected already (lifecycle.run).
        _leave(code)
    raise SystemExit(code)


def _exit_now(code: int) -> None:
    """After Ctrl-C every result file is fsynced and closed; stop Ray (a no-op when the
    run already did, needed when the interrupt came while Ray was starting), then leave
    at once, since threads Flower's engine left blocked (or starts while it winds down)
    would otherwise hold the interpreter's exit indefinitely."""
    if "ray" in sys.modules:
        from fedsim.flower import ray_instance

        ray_instance.stop_ray(wait=0)  # the loop was cut short: its thread need not end soon
    _leave(code)


def _leave(code: int) -> typing.NoReturn:
    if "ray" in sys.modules:
        from fedsim.flower import ray_instance

        ray_instance.end_raylet_children()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that has gone
            stream.flush()
    os._exit(code)


def _lifecycle():
    """fedsim.runner.lifecycle, imported when a run begins (it imports torch and flwr)."""
    from fedsim.runner import lifecycle

    return lifecycle


def _resume(
    args: argparse.Namespace, given: sweep.Grid, started: float, seams: Seams | None
) -> None:
    """A resumed run keeps its stored config; only --rounds may change (to extend it)."""
    others = [flag(name) for name in given if name != "rounds"]
    others += ["--plot"] * bool(args.plot) + ["--experiment"] * bool(args.experiment)
    if others:
        raise ConfigError(
            "--resume", f"takes a run folder and at most --rounds; drop {', '.join(others)}"
        )
    if len(given.get("rounds", [])) > 1:
        raise ConfigError("--resume", "takes one --rounds value, not a list")
    lifecycle = _lifecycle()
    rounds = given.get("rounds", [None])[0]
    lifecycle.resume(
        Path(args.resume),
        rounds,
        started,
        seams=seams,
        accept_changed_code=args.accept_changed_code,
    )
