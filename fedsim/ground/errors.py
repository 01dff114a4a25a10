"""Why a run can end other than complete, each a class the command line, the lifecycle
and config.json agree on.

- ConfigError: bad input, found before anything is written (`error:` line, exit 2).
- RunEnded and its kinds: the run started and stopped for a reason it records as its
  status in config.json, with the reason as its error (`error:` line, exit 1).
- RunStopped: the driver asked the round loop to stop (Ctrl-C, SIGTERM, SIGHUP); the
  run's status is `interrupted` (exit 130).
- ConsoleClosed: what reads the run's console went away (`| head`, a closed pipe);
  the run stops as after Ctrl-C (`interrupted`, exit 130).
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad option value: printed as one line, `error: <option>: <message>`."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class RunEnded(RuntimeError):
    """The run cannot go on; `status` is what config.json says of it."""

    status = "failed"


class RunAborted(RunEnded):
    """No update reached the server for too long (every client failing or late), or
    the engine's nodes never showed up."""

    status = "aborted"


class Diverged(RunEnded):
    """The model's loss became NaN or infinite: nothing after it can be trusted."""

    status = "diverged"


class OutputFailed(RunEnded):
    """A result file could not be written (a full disk, the run folder removed): the
    rounds already on disk are kept, and --resume goes on once the cause is gone."""


class RunStopped(RuntimeError):
    """The driver asked the loop to stop (Ctrl-C); completed rounds are on disk."""


class ConsoleClosed(RuntimeError):
    """What reads fedsim's console went away (`simulate.py ... | head`, a pipe's reader
    killed). A stop, as a closed terminal's SIGHUP is: completed rounds are kept, the
    status is `interrupted`, and the process leaves (exit 130) rather than training
    on for nobody or leaving with a traceback. Not a KeyboardInterrupt: the round loop
    runs in Flower's thread, which would print one."""
