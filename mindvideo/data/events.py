"""The onset table of the ``custom`` layout (``events.tsv``), read strictly.

One header line, then one line per (run, stimulus) showing; fields separated by tabs, UTF-8 (a byte-order mark is
allowed). Columns: ``run``, ``onset``, ``stimulus`` (required), ``duration``, ``split``, ``captions`` (optional;
empty or ``n/a`` means unset); other columns are ignored. Blank lines and lines whose first character other than
white space is ``#`` are skipped. Every other problem raises one :class:`MindVideoError` naming the file and line:
a row with another field count than the header, an empty required field, an onset or duration that is not a
non-negative number, a split other than train/test, and a row repeating an earlier row's run, onset and stimulus
(the same showing twice would count as two repeats of the stimulus).
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from mindvideo.errors import MindVideoError

REQUIRED = ("run", "onset", "stimulus")
OPTIONAL = ("duration", "split", "captions")
SPLITS = ("train", "test")
UNSET = ("", "n/a")
HELP = "see the README's `data prepare --layout custom`"


@dataclasses.dataclass(frozen=True)
class Event:
    """One row: the run file showing ``stimulus`` from ``onset`` s, relative paths as written in the table."""

    line: int  # 1-based line number in the file
    run: str
    onset: float
    stimulus: str
    duration: float | None = None
    split: str = "train"
    captions: str | None = None


def read_events(path: str | Path) -> list[Event]:
    """The rows of the onset table at ``path`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise MindVideoError(
            f"expected an onset table at {path}",
            "no such file",
            "write events.tsv with columns run, onset, stimulus (see the README)",
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MindVideoError(f"expected a UTF-8 tab-separated table at {path}", str(exc), "save it as UTF-8") from None
    return parse_events(text, path)


def parse_events(text: str, source: str | Path = "events.tsv") -> list[Event]:
    """The rows of an onset table given as text; ``source`` names it in messages."""
    lines = [(n, line) for n, line in enumerate(re.split(r"\r\n|\r|\n", text), 1) if _is_content(line)]
    if not lines:
        raise MindVideoError(f"expected a header line run, onset, stimulus in {source}", "an empty table", HELP)
    header = _header(lines[0], source)
    events: list[Event] = []
    seen: dict[tuple[str, float, str], int] = {}
    for number, line in lines[1:]:
        event = _row(number, line, header, source)
        key = (event.run, event.onset, event.stimulus)
        if key in seen:
            raise MindVideoError(
                f"expected each showing once in {source}",
                f"line {number} repeating line {seen[key]} (run {event.run!r}, onset {event.onset:g}, "
                f"stimulus {event.stimulus!r})",
                "delete the duplicated row",
            )
        seen[key] = number
        events.append(event)
    if not events:
        raise MindVideoError(f"expected at least one row under the header of {source}", "none", HELP)
    return events


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _header(numbered: tuple[int, str], source) -> list[str]:
    number, line = numbered
    names = [name.strip() for name in line.split("\t")]
    missing = [name for name in REQUIRED if name not in names]
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if missing or repeated:
        found = f"missing {missing}" if missing else f"repeated columns {repeated}"
        raise MindVideoError(
            f"expected a tab-separated header with columns run, onset, stimulus on line {number} of {source}",
            f"{_show(line)} ({found})",
            "fix the header (tabs between the column names)",
        )
    return names


def _row(number: int, line: str, header: list[str], source) -> Event:
    fields = [field.strip() for field in line.split("\t")]
    where = f"line {number} of {source}"
    if len(fields) != len(header):
        raise MindVideoError(
            f"expected {len(header)} tab-separated fields on {where} (as in its header)",
            f"{len(fields)}: {_show(line)}",
            "fix the row (write n/a for an unset optional field)",
        )
    values = dict(zip(header, fields))
    empty = [name for name in REQUIRED if values[name] in UNSET]
    if empty:
        raise MindVideoError(f"expected a value in column {empty[0]!r} on {where}", _show(line), "fill it in")
    split = values.get("split", "")
    split = "train" if split in UNSET else split
    if split not in SPLITS:
        raise MindVideoError(f"expected split train or test on {where}", _show(split), "fix the split column")
    duration = values.get("duration", "")
    captions = values.get("captions", "")
    return Event(
        number,
        values["run"],
        _number(values["onset"], "onset", where),
        values["stimulus"],
        None if duration in UNSET else _number(duration, "duration", where, positive=True),
        split,
        None if captions in UNSET else captions,
    )


def _number(text: str, column: str, where: str, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise MindVideoError(f"expected a {kind} number of seconds in column {column!r} on {where}", _show(text))
    return value


def _show(text: str, limit: int = 80) -> str:
    """A value for a one-line message: quoted with escapes, shortened."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
