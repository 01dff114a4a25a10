"""A play's text split by speaker, as LEAF splits Shakespeare (one client per speaking
role): `input.txt` of speeches, each a `SPEAKER:` line after a blank line (or at the
start) and the lines spoken. Every position of a speaker's text is an example: the
STRING_LENGTH characters before it, and the character there (LEAF's 80 → 1)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from fedsim.learning.data.dataset import DataError

TEXT_FILE = "input.txt"
STRING_LENGTH = 80  # LEAF's Shakespeare: 80 characters, then the next one
MIN_EXAMPLES = 200  # a speaker whose speeches give fewer is left out (said in config.json)
TEST_SHARE = 0.1  # the end of each speaker's text is its test part
TEST_STRIDE = 8  # a test example every 8th position: a round's central evaluation stays short


def text_file(folder: Path) -> Path | None:
    """The play's text when `folder` holds one (and no other kind of data)."""
    file = folder / TEXT_FILE
    return file if file.is_file() else None


def speeches(text: str, where: str) -> dict[str, list[str]]:
    """Each speaker's speeches, in order: a block's first line, ending in ':', names the
    speaker; the block's other lines are what they say (a line inside a speech may end
    in ':' too)."""
    found: dict[str, list[str]] = defaultdict(list)
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) < 2 or not lines[0].endswith(":") or len(lines[0]) < 2:
            continue
        found[lines[0][:-1].strip()].append("\n".join(lines[1:]))
    if not found:
        raise DataError(
            f"{where} has no speeches: expected blocks of a 'SPEAKER:' line and the lines "
            "spoken, a blank line between them"
        )
    return dict(found)


def read_play(file: Path) -> tuple[dict[str, np.ndarray], list[str], list[str], dict]:
    """Train and test strings (uint8 indices into the sorted characters of the text),
    the next character of each, and each string's speaker. A speaker's text is its
    speeches joined by newlines; its first (1 - TEST_SHARE) of positions train, and
    every TEST_STRIDE-th of the rest tests (a test target never a training one)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{file}: not a readable text file ({error})") from None
    by_speaker = speeches(text, str(file))
    vocabulary = sorted(set("\n".join("\n".join(said) for said in by_speaker.values())))
    if len(vocabulary) > 256:
        raise DataError(f"{file} has {len(vocabulary)} distinct characters, at most 256")
    code = np.zeros(0x110000, dtype=np.uint8)
    code[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary), dtype=np.uint8)
    parts: dict[str, list[np.ndarray]] = defaultdict(list)
    kept: list[str] = []
    left_out = 0
    for speaker, said in by_speaker.items():
        codes = code[np.frombuffer("\n".join(said).encode("utf-32-le"), dtype=np.uint32)]
        positions = len(codes) - STRING_LENGTH
        if positions < MIN_EXAMPLES:
            left_out += 1
            continue
        windows = np.lib.stride_tricks.sliding_window_view(codes, STRING_LENGTH + 1)
        cut = positions - max(1, round(positions * TEST_SHARE))
        group = len(kept)
        kept.append(speaker)
        for split, rows in (("train", windows[:cut]), ("test", windows[cut::TEST_STRIDE])):
            parts[f"{split}_x"].append(rows[:, :STRING_LENGTH])
            parts[f"{split}_y"].append(rows[:, STRING_LENGTH].astype(np.int64))
            parts[f"{split}_groups"].append(np.full(len(rows), group, dtype=np.int64))
    if not kept:
        raise DataError(f"{file}: no speaker says {STRING_LENGTH + MIN_EXAMPLES} characters")
    arrays = {name: np.ascontiguousarray(np.concatenate(rows)) for name, rows in parts.items()}
    notes = {
        "speakers": len(kept),
        "speakers_left_out": left_out,
        "rule": f"a speaker takes part when its speeches give {MIN_EXAMPLES} examples or more",
    }
    return arrays, vocabulary, kept, notes
