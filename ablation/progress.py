"""A one-line progress display: rewrites itself on a terminal, prints sparse lines in logs."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`Progress(total, "pretrain").update(n, loss=0.12)` shows `pretrain 3/20 [15%] loss=0.12 ...`."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, every_s: float = 10.0):
        self.total, self.label = total, label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if not self.tty else 0.0
        self._last = 0.0

    def update(self, done: int, **fields: object) -> None:
        now = time.monotonic()
        if done < self.total and now - self._last < self.every_s:
            return
        self._last = now
        pct = 100 * done / max(self.total, 1)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{self.label} {done}/{self.total} [{pct:3.0f}%] {extra}"
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
