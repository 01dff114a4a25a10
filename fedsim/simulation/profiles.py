"""Client device profiles: each client's compute speed, bandwidths and availability.

Three sources (--profiles): none, every client the median device, always online; a CSV
file (columns client, examples_per_second, down_mbps, up_mbps, online), clients it does
not list being the median device, always online; or `lognormal`, speeds and bandwidths
drawn around the medians from the run's seed, every client always online.

Units: examples per second; Mbit/s (1 Mbit = 10⁶ bits); online intervals in simulated
seconds, `start-end` separated by `;` (an empty cell: always online). The medians, and
the measurements they come from (docs/heterogeneity.md):
- compute: FedScale's lognormal device model (Lai et al., ICML 2022): 0.005 s per
  example scaled by LogNormal(1, 0.6), a median of 0.005·e = 13.6 ms per example;
- bandwidth: Ookla's Speedtest Global Index, mobile, July 2021: 55.07 Mbit/s down,
  12.61 Mbit/s up.

This module imports nothing heavy, so that the command line refuses a bad file (one
line, exit 2) before Ray starts.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from fedsim.ground import streams
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import flag

MEDIAN_EXAMPLES_PER_SECOND = 1 / (0.005 * math.e)  # 73.6: FedScale's median device
MEDIAN_DOWN_MBPS = 55.07  # Speedtest Global Index, mobile download, July 2021
MEDIAN_UP_MBPS = 12.61  # Speedtest Global Index, mobile upload, July 2021
COMPUTE_SIGMA = 0.6  # FedScale's lognormal spread ("tail_skew") of device speed
BANDWIDTH_SIGMA = 1.0  # a choice, no measurement: about 13th to 87th percentile = ×⅓ to ×3
LOGNORMAL = "lognormal"
COLUMNS = ("client", "examples_per_second", "down_mbps", "up_mbps", "online")
# The slowest speed or bandwidth a profile may give: one example (or Mbit) in 31.7
# years; below it the simulated clock's seconds lose all meaning, then overflow
MIN_RATE = 1e-9

Interval = tuple[float, float]  # [start, end) in simulated seconds


class ClientProfile(NamedTuple):
    examples_per_second: float
    down_mbps: float
    up_mbps: float


@dataclass(frozen=True)
class Profiles:
    """Every client's device, indexed by partition id. Clients without intervals in
    `online` are always online."""

    examples_per_second: np.ndarray
    down_mbps: np.ndarray
    up_mbps: np.ndarray
    online: Mapping[int, tuple[Interval, ...]] = field(default_factory=dict)

    def of(self, pid: int) -> ClientProfile:
        return ClientProfile(
            float(self.examples_per_second[pid]),
            float(self.down_mbps[pid]),
            float(self.up_mbps[pid]),
        )

    def online_at(self, t: float) -> list[int]:
        """The clients online at simulated time t, in partition order."""
        return [
            pid
            for pid in range(len(self.examples_per_second))
            if pid not in self.online or any(a <= t < b for a, b in self.online[pid])
        ]

    def next_online(self, t: float) -> float | None:
        """The earliest time from t on at which some client is online (None: never)."""
        if len(self.online) < len(self.examples_per_second):
            return t  # someone is always online
        starts = [max(a, t) for windows in self.online.values() for a, b in windows if b > t]
        return min(starts, default=None)


def median_profiles(clients: int) -> Profiles:
    """Every client the median device, always online: the clock without --profiles."""
    return Profiles(
        np.full(clients, MEDIAN_EXAMPLES_PER_SECOND),
        np.full(clients, MEDIAN_DOWN_MBPS),
        np.full(clients, MEDIAN_UP_MBPS),
    )


def lognormal_profiles(clients: int, seed: int) -> Profiles:
    """Speeds and bandwidths drawn around the medians, from a stream of the run's seed
    that no other draw uses; every client always online."""
    rng = streams.run_rng(seed, streams.PROFILES)
    return Profiles(
        rng.lognormal(math.log(MEDIAN_EXAMPLES_PER_SECOND), COMPUTE_SIGMA, clients),
        rng.lognormal(math.log(MEDIAN_DOWN_MBPS), BANDWIDTH_SIGMA, clients),
        rng.lognormal(math.log(MEDIAN_UP_MBPS), BANDWIDTH_SIGMA, clients),
    )


def load_profiles(cfg: RunConfig) -> Profiles:
    """The run's profiles from --profiles (arrays of one value per client: call it once
    the client count is known to fit the data); a bad file is a one-line ConfigError."""
    if not cfg.profiles:
        return median_profiles(cfg.clients)
    if cfg.profiles == LOGNORMAL:
        return lognormal_profiles(cfg.clients, cfg.seed)
    return read_profiles_csv(cfg.profiles, cfg.clients)


def check_profiles(cfg: RunConfig) -> None:
    """Refuse a bad --profiles file (one line) before anything is loaded, allocating
    nothing per client: a client count the data cannot hold is refused afterwards."""
    if cfg.profiles and cfg.profiles != LOGNORMAL:
        _read_rows(cfg.profiles, cfg.clients)


def _error(where: str, message: str) -> ConfigError:
    return ConfigError(flag("profiles"), f"{where}: {message}")


def read_profiles_csv(path: str, clients: int) -> Profiles:
    """A profiles file: a header naming COLUMNS, then one row per listed client.
    Clients not listed are the median device, always online."""
    rows = _read_rows(path, clients)
    profiles = median_profiles(clients)
    online: dict[int, tuple[Interval, ...]] = {}
    for pid, row, where in rows:
        for name in COLUMNS[1:4]:
            getattr(profiles, name)[pid] = _positive(name, row[name], where)
        if row["online"]:
            online[pid] = _intervals(row["online"], where)
    return Profiles(profiles.examples_per_second, profiles.down_mbps, profiles.up_mbps, online)


def _read_rows(path: str, clients: int) -> list[tuple[int, dict[str, str], str]]:
    """The file's rows, checked: each listed client's id, its cells by column, and
    where it is (for messages); ConfigError at the first bad one."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # Excel's "CSV UTF-8"
            reader = csv.reader(handle)
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise _error(path, f"cannot be read ({error})") from None
    if not rows:
        raise _error(path, f"is empty; the first line must name the columns {', '.join(COLUMNS)}")
    header = [name.strip() for name in rows[0][1]]
    where = f"{path} line {rows[0][0]}"
    if missing := [name for name in COLUMNS if name not in header]:
        raise _error(where, f"missing column(s) {', '.join(missing)} (need {', '.join(COLUMNS)})")
    if unknown := [name for name in header if name not in COLUMNS]:
        raise _error(where, f"unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})")
    if twice := sorted({name for name in header if header.count(name) > 1}):
        raise _error(where, f"column {twice[0]!r} appears twice")
    found: list[tuple[int, dict[str, str], str]] = []
    seen: dict[int, int] = {}
    for line, cells in rows[1:]:
        where = f"{path} line {line}"
        if not any(cell.strip() for cell in cells):
            continue  # a blank line
        if len(cells) != len(header):
            raise _error(where, f"{len(cells)} cells, the header has {len(header)}")
        row = dict(zip(header, (cell.strip() for cell in cells), strict=True))
        pid = _client(row["client"], clients, where)
        if pid in seen:
            raise _error(where, f"client {pid} is listed twice (first on line {seen[pid]})")
        seen[pid] = line
        for name in COLUMNS[1:4]:
            _positive(name, row[name], where)
        if row["online"]:
            _intervals(row["online"], where)
        found.append((pid, row, where))
    return found


def _client(text: str, clients: int, where: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise _error(where, f"client {text!r} is not a partition id (an integer)") from None
    if not 0 <= pid < clients:
        raise _error(where, f"client {pid} is not one of the run's {clients} (0 to {clients - 1})")
    return pid


def _positive(name: str, text: str, where: str) -> float:
    """A speed or bandwidth: positive, finite, and not so small that the simulated
    seconds it gives overflow (a subnormal such as 1e-320 has an infinite inverse)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _error(where, f"{name} must be a positive number, got {text!r}")
    if value < MIN_RATE:
        raise _error(where, f"{name} must be at least {MIN_RATE:g}, got {text!r}")
    return value


def _intervals(text: str, where: str) -> tuple[Interval, ...]:
    """`start-end;start-end` in simulated seconds, 0 ≤ start < end (end may be inf)."""
    windows = []
    for part in text.split(";"):
        try:
            start, end = (float(x) for x in part.split("-"))
        except ValueError:
            start, end = math.nan, math.nan
        if not (math.isfinite(start) and 0 <= start < end):
            raise _error(
                where,
                f"online {text!r} is not start-end intervals in simulated seconds "
                "separated by ';' (0 ≤ start < end, e.g. 0-3600;7200-inf)",
            )
        windows.append((start, end))
    return tuple(sorted(windows))
