"""Seeds derived from a position (seed, epoch, step): the same keys give the same seed in any process,
on any machine and after any resume, so nothing random depends on what ran before."""

from __future__ import annotations

import hashlib


def stable_seed(*keys: int) -> int:
    """A 63-bit seed that is a stable hash of `keys` (Python's own hash() is salted per process)."""
    digest = hashlib.blake2b("/".join(map(str, keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
