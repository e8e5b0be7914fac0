"""Image folders: root/<split>/<class>/* scanned into (files, labels, classes), with class subsets.

`data.classes` picks class folders by name (a list, a file with one name a line, or a shipped list
such as `imagenet100`) and `data.per_class` keeps the first k training images of each class
(file-name order; the test split stays whole), so ImageNet-100 and smaller subsets read the
ImageNet folder itself, with no copy.
Every problem with a folder (unreadable, an empty class, a class list naming a missing class) is
one line naming the path, raised before anything runs. No torch here: `ablate status` counts a
folder's images for its cost estimate with it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import did_you_mean

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
FOLDER_LAYOUT = "expected <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (or val/ for test)"
CLASS_LISTS = Path(__file__).resolve().parent / "classes"  # shipped lists: <name>.txt
# Training images of the shipped class lists on ILSVRC-2012 (for cost estimates before the data is there).
KNOWN_TRAIN_SIZES = {"imagenet100": 126_689}


@dataclass(frozen=True)
class Split:
    """One split of a folder: image paths, their labels (indices into `classes`) and the class names."""

    files: tuple[str, ...]
    labels: tuple[int, ...]
    classes: tuple[str, ...]


def shipped_lists() -> list[str]:
    return sorted(p.stem for p in CLASS_LISTS.glob("*.txt"))


def class_names(spec: str | Sequence[str] | None) -> list[str] | None:
    """The class folder names of `data.classes`: None (every class), a list, a file, or a shipped list name."""
    if spec is None or not isinstance(spec, str):
        return None if spec is None else [str(name) for name in spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        path = CLASS_LISTS / f"{spec.removesuffix('.txt')}.txt"
    if not path.is_file():
        raise ValueError(
            f"data.classes: no file '{spec}' and no shipped class list of that name"
            f"{did_you_mean(spec, shipped_lists())}; shipped: {', '.join(shipped_lists())}"
        )
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def classes_key(spec: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """`data.classes` in a hashable form (a list becomes a tuple), for caches and sets of folders;
    every function here takes it as it takes the list."""
    return spec if spec is None or isinstance(spec, str) else tuple(spec)


def split_dir(root: Path, split: str) -> Path:
    """root/train, or root/test (root/val when there is no test/)."""
    names = ("test", "val") if split in ("test", "val") else (split,)
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(
        f"no image folder at {root / names[0]} (looked for {', '.join(names)} under {root.resolve()}); {FOLDER_LAYOUT}"
    )


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        return list(os.scandir(folder))
    except OSError as e:
        raise ValueError(f"data.root: cannot read {folder} ({e.strerror or e})") from None


def _is(entry: os.DirEntry, kind: str) -> bool:
    """entry.is_file() / is_dir(), following links; a link that cannot be followed (a loop) is a
    one-line error naming it."""
    try:
        return entry.is_file() if kind == "file" else entry.is_dir()
    except OSError as e:
        raise ValueError(f"data.root: cannot read {entry.path} ({e.strerror or e})") from None


def _images(folder: Path) -> list[str]:
    return sorted(e.path for e in _entries(folder) if e.name.lower().endswith(IMAGE_EXTENSIONS) and _is(e, "file"))


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {e.name: Path(e.path) for e in _entries(folder) if _is(e, "dir")}


def _select(found: dict[str, Path], wanted: list[str] | None, where: Path) -> list[str]:
    """The chosen class names, sorted (their label order); a wanted class missing here is an error."""
    if wanted is None:
        return sorted(found)
    for name in wanted:
        if name not in found:
            raise ValueError(
                f"data.classes: '{name}' is not a class folder under {where}"
                f"{did_you_mean(name, found)} ({len(found)} class folders there)"
            )
    if len(set(wanted)) != len(wanted):
        twice = sorted({n for n in wanted if wanted.count(n) > 1})
        raise ValueError(f"data.classes: {', '.join(twice)} listed more than once")
    return sorted(wanted)


def scan(
    root: str | Path, split: str, classes: str | Sequence[str] | None = None, per_class: int | None = None
) -> Split:
    """The images of a split: every class of train/ (or the `classes` chosen), at most `per_class` each.

    Class names and label order come from train/ for every split; an empty class folder is an error.
    """
    root = Path(root)
    wanted = class_names(classes)
    train = split_dir(root, "train")
    names = _select(_class_dirs(train), wanted, train)
    if not names:
        raise ValueError(f"data.root: no class folders under {train}; {FOLDER_LAYOUT}")
    folder = split_dir(root, split)
    found = _class_dirs(folder)
    if wanted is None:
        extra = sorted(set(found) - set(names))
        if extra:
            raise ValueError(f"data.root: class folder {folder / extra[0]} is not in {train}")
    files, labels = [], []
    for label, name in enumerate(names):
        if name not in found:
            raise ValueError(f"data.root: class '{name}' of {train} has no folder under {folder}")
        images = _images(found[name])[:per_class]
        if not images:
            raise ValueError(f"data.root: class folder {found[name]} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        files += images
        labels += [label] * len(images)
    return Split(tuple(files), tuple(labels), tuple(names))


def check(root: str | Path, classes: str | Sequence[str] | None = None, per_class: int | None = None) -> None:
    """Scan train (at most `per_class` images a class) and test (whole) once (one-line ValueError /
    FileNotFoundError on any problem)."""
    scan(root, "train", classes, per_class)
    scan(root, "test", classes)


@functools.lru_cache(maxsize=16)
def _count(root: str, classes: tuple | str | None, per_class: int | None) -> int:
    return len(scan(root, "train", classes, per_class).files)


def train_size(root: str | None, classes: str | Sequence[str] | None, per_class: int | None) -> tuple[int, str] | None:
    """(training images, where the number comes from) for cost estimates, or None when unknown.

    Counted when the folder is there; else the known size of a shipped class list on ILSVRC-2012.
    """
    if root and Path(root, "train").is_dir():
        return _count(str(root), classes_key(classes), per_class), f"counted in {root}"
    if isinstance(classes, str) and per_class is None and classes.removesuffix(".txt") in KNOWN_TRAIN_SIZES:
        name = classes.removesuffix(".txt")
        return KNOWN_TRAIN_SIZES[name], f"the {name} classes of ILSVRC-2012; {root} not found"
    return None
