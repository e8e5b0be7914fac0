"""Error messages that teach: name the bad value, list what is allowed, suggest a close match."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(bad: object, choices: Iterable[str]) -> str:
    """Return " (did you mean 'x'?)" for the closest choice, or "" when nothing is close."""
    close = difflib.get_close_matches(str(bad), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choices_error(kind: str, bad: object, choices: Iterable[str]) -> ValueError:
    """A ValueError for an unknown name, e.g. "unknown augmentation 'colr' (did you mean 'color'?)"."""
    choices = list(choices)
    return ValueError(
        f"unknown {kind} '{bad}'{did_you_mean(bad, choices)}; choose from: {', '.join(map(str, choices))}"
    )
