"""Command line -> validated RunConfig(s) -> runs. Bad input: one line, exit code 2."""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import types
import typing
from collections.abc import Sequence
from typing import Any

from fedsim.config import ConfigError, RunConfig, default_data, fields, flag, validate

_TYPES = typing.get_type_hints(RunConfig)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError("usage", message)


def _base_type(name: str) -> type:
    hint = _TYPES[name]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def _convert(name: str, text: str) -> Any:
    kind = _base_type(name)
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
        "Numeric options take a comma list (--clients 2,4,8) to sweep.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in fields():
        if _base_type(f.name) is bool:
            parser.add_argument(
                flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=f.metadata["help"],
            )
        else:
            shown = "auto" if f.default is None else f.default
            parser.add_argument(
                flag(f.name),
                metavar=f.name.upper(),
                default=None,
                help=f"{f.metadata['help']} (default: {shown})",
            )
    return parser


def parse_configs(argv: Sequence[str]) -> list[RunConfig]:
    """One validated RunConfig per combination of the comma-listed values."""
    args = vars(build_parser().parse_args(argv))
    choices: dict[str, list[Any]] = {}
    for f in fields():
        raw = args[f.name]
        if raw is None:
            choices[f.name] = [default_data() if f.name == "data" else f.default]
        elif isinstance(raw, bool) or _base_type(f.name) is str:
            choices[f.name] = [raw]
        else:
            choices[f.name] = [_convert(f.name, part) for part in raw.split(",")]
    names = list(choices)
    return [
        validate(RunConfig(**dict(zip(names, combo, strict=True))))
        for combo in itertools.product(*choices.values())
    ]


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        configs = parse_configs(sys.argv[1:] if argv is None else argv)
        from fedsim import runner
        from fedsim.server_app import RunAborted

        for index, cfg in enumerate(configs, 1):
            if len(configs) > 1:
                print(f"fedsim: run {index} of {len(configs)}", flush=True)
            runner.run(cfg, started if index == 1 else None)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsim: interrupted; completed rounds are in rounds.csv", file=sys.stderr)
        return 130
    except RunAborted as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
