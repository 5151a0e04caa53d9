"""The one exception type for user mistakes.

Library code raises :class:`MindVideoError` when the *input* is wrong (a missing file, a wrong voxel count, an
engine built for another GPU). Its message says what was expected, what was found and what to do. The CLI turns it
into one line on stderr and exit code 2; programming errors keep their tracebacks.
"""

from __future__ import annotations


class MindVideoError(Exception):
    """A user-facing error: bad input, missing checkpoint part, incompatible engine."""

    def __init__(self, what: str, found: str | None = None, fix: str | None = None):
        self.what, self.found, self.fix = what, found, fix
        parts = [what]
        if found:
            parts.append(f"found {found}")
        if fix:
            parts.append(fix)
        super().__init__("; ".join(parts))
