"""What an image folder holds, in one short hash: a folder cell's id names its data by it, not by its path.

A fingerprint hashes the name (relative to the split) and size of every image of every class under
train/ and test/ (or val/), so the same files at another path (a node-local copy, a new scratch
folder) give the same cell ids, and an image added, removed, renamed or resized gives new ones.
That stats every file (2 s for the 60,000 of CIFAR-10 as JPEGs on a local disk: most of a minute
for the 1.28 M of ImageNet), so a fingerprint is remembered in the cache folder (FINGERPRINTS), keyed by
the modification times of the split and class folders, which change when an entry is added, removed
or renamed: an unchanged folder costs one stat per class folder, also when it was copied with its
times (rsync -a, cp -a). Not seen without a new folder time: a file rewritten in place under its
old name; touch its class folder after such an edit.
A folder that is not here (a dry run on a machine without the data, a scratch folder since purged)
has the fingerprint last seen at its path, or none: its cells' ids then hold data.root, as every
folder cell's id did before fingerprints (identity.signature).
No torch here: grids expand, and `ablate status` runs, without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

from ..config import CellConfig
from ..store import atomic_write
from .cache import default_cache_dir
from .folders import IMAGE_EXTENSIONS, _class_dirs, _entries, _is, split_dir

FINGERPRINTS = "folder-fingerprints.json"  # in the cache folder: {"stamps": {stamp: fp}, "roots": {path: fp}}
VERSION = 1  # of what a fingerprint hashes


def fingerprint(root: str | Path) -> str | None:
    """The fingerprint of the image folder at `root` (remembered while its folders are unchanged),
    or None when it has no train/ folder here."""
    root = Path(root).expanduser()
    classes = _class_folders(root)
    if classes is None:
        return None
    book = _read_book()
    stamp = hashlib.sha256(repr([(name, path.stat().st_mtime_ns) for name, path in classes]).encode()).hexdigest()
    found = book["stamps"].get(stamp) or _hash_images(classes)
    where = str(root.resolve())
    if (book["stamps"].get(stamp), book["roots"].get(where)) != (found, found):
        book["stamps"][stamp] = book["roots"][where] = found
        with contextlib.suppress(OSError):  # a read-only cache folder: computed again next time
            atomic_write(default_cache_dir() / FINGERPRINTS, lambda f: json.dump(book, f, indent=1))
    return found


def last_seen(root: str | Path) -> str | None:
    """The fingerprint the folder at `root` had when it was last fingerprinted on this cache folder."""
    return _read_book()["roots"].get(str(Path(root).expanduser().resolve()))


def identify(cfg: CellConfig, seen: dict[str, str | None] | None = None) -> CellConfig:
    """`cfg` with data.fingerprint filled in when its data is a folder whose fingerprint is known here
    (`seen`: fingerprints already taken, by data.root, so a grid takes each once). A fingerprint given
    in the config stands for a folder that is not here; one that the folder here contradicts is a
    one-line error."""
    data = cfg.data
    if data.name != "folder" or data.root is None:
        return cfg
    seen = {} if seen is None else seen
    if data.root not in seen:
        seen[data.root] = fingerprint(data.root)
    found = seen[data.root]
    if found is not None and data.fingerprint not in (None, found):
        raise ValueError(
            f"data.fingerprint: '{data.fingerprint}' is not what the images under {data.root} give "
            f"('{found}'); leave it out to use theirs"
        )
    found = found or data.fingerprint or last_seen(data.root)
    return cfg if found is None else dataclasses.replace(cfg, data=dataclasses.replace(data, fingerprint=found))


def _class_folders(root: Path) -> list[tuple[str, Path]] | None:
    """("train/<class>" or "test/<class>", folder) for every class folder, sorted; None without train/.
    The test split counts as test/ also where the folder names it val/."""
    if not (root / "train").is_dir():
        return None
    out = [("train", root / "train")]
    with contextlib.suppress(FileNotFoundError):  # no test split: the launch's folder check names it
        out.append(("test", split_dir(root, "test")))
    return [(f"{split}/{name}", path) for split, folder in out for name, path in sorted(_class_dirs(folder).items())]


def _hash_images(classes: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256(f"image folder v{VERSION}".encode())
    for name, folder in classes:
        for entry in sorted(_entries(folder), key=lambda e: e.name):
            if entry.name.lower().endswith(IMAGE_EXTENSIONS) and _is(entry, "file"):
                digest.update(f"{name}/{entry.name}\0{entry.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


def _read_book() -> dict[str, dict[str, str]]:
    """The remembered fingerprints (empty when the file is missing or unreadable: they are only a cache)."""
    try:
        book = json.loads((default_cache_dir() / FINGERPRINTS).read_text())
    except (OSError, ValueError):
        book = None
    if not (isinstance(book, dict) and all(isinstance(book.get(k), dict) for k in ("stamps", "roots"))):
        return {"stamps": {}, "roots": {}}
    return book
