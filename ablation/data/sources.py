"""Where images come from: whole splits as uint8 tensors (small sets; large folders stream, see stream.py).

Small sets are decoded once and cached as one tensor file, so the next run starts in seconds; the
augmentations then run batched on the device (see batcher.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from ..errors import choices_error
from ..names import DATASETS
from ..store import atomic_write, locked
from .cache import default_cache_dir
from .folders import FOLDER_LAYOUT, Split, scan

CACHE_VERSION = 1
MAX_RESIDENT_BYTES = 32 * 2**30  # beyond this a folder is streamed (data.serve=auto), not held in memory


@dataclass
class ImageSet:
    """A whole split in memory: images (N,3,H,W) uint8, labels (N,) int64, class names."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N,3,H,W); got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 (N,) with N={len(self.images)}; "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    size: int = 32,
    download: bool = False,
    cache_dir: str | Path | None = None,
    *,
    per_class: int | None = None,
    classes: str | Sequence[str] | None = None,
    workers: int | None = None,
    **embedded_kw: int,
) -> tuple[ImageSet, ImageSet]:
    """(train, test) splits of `name` at size x size, decoded once and cached under `cache_dir`.

    `embedded_kw` (n_train, n_test, seed) go to make_embedded and are ignored for other sets.
    `per_class` keeps the first k training images of each class (a smaller study on the same
    classes; in a folder the first in file-name order); the test split stays whole, so accuracies
    stay comparable across caps.
    Folders only: `classes` picks class folders (see folders.class_names); `workers` decode them
    (default: up to 8 for sets above 2,000 images).
    """
    if name not in DATASETS:
        raise choices_error("dataset", name, DATASETS)
    if name == "embedded":
        from .embedded import make_embedded  # embedded.py imports ImageSet from here

        return make_embedded(size=size, **embedded_kw)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if name == "folder":
        if root is None:
            raise ValueError(f"dataset 'folder' needs data.root; {FOLDER_LAYOUT}")
        splits = scan(root, "train", classes, per_class), scan(root, "test", classes)
        return folder_sets(root, splits, size, per_class, workers, cache_dir)
    root = Path(root) if root is not None else cache_dir / "datasets"
    key = _cache_key(name, root.resolve(), size, per_class)
    return _cached(
        cache_dir / f"{name}-{size}-{key}.pt",
        lambda: (
            _torchvision(name, root, True, size, download, per_class),
            _torchvision(name, root, False, size, download),
        ),
    )


def folder_sets(
    root: str | Path,
    splits: tuple[Split, Split],
    size: int,
    per_class: int | None = None,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[ImageSet, ImageSet]:
    """(train, test) of an image folder already scanned (folders.scan), decoded once at size x size and
    cached; the cache key stamps every file's size and modification time, so a changed file is seen."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stamp = [[(p, *_stat(p)) for p in split.files] for split in splits]
    key = _cache_key("folder", Path(root).resolve(), size, per_class, stamp)
    return _cached(
        cache_dir / f"folder-{size}-{key}.pt",
        lambda: (_decode_all(splits[0], size, workers), _decode_all(splits[1], size, workers)),
    )


# ---- cache -------------------------------------------------------------------------------------


def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _cache_key(*parts: object) -> str:
    return hashlib.sha256(repr((CACHE_VERSION, *parts)).encode()).hexdigest()[:16]


def _cached(path: Path, build: Callable[[], tuple[ImageSet, ImageSet]]) -> tuple[ImageSet, ImageSet]:
    """The splits mapped from `path` (built first and written atomically when it is missing or unreadable).

    Mapped, not read: the host holds pages of the file that the kernel may drop, not a copy, so a
    set moved to the device leaves no second copy in host memory (25 GB for ImageNet-100 at 256 px),
    and a freshly built set is mapped back from its file once written, its decoded copy let go.

    Built once: the builder holds a lock beside the file, and the other processes that need the same
    set (the ranks of a node, the cells of a grid) wait for it and map its file. Each decoding on its
    own would hold the decoded set once per process (about 200 GB of host memory for ImageNet-100 on an
    8-GPU node) and do the node's slowest job eight times."""
    mapped = _readable(path)
    if mapped is not None:
        return mapped
    looked = _identity(path)

    def wait(holder: str) -> None:
        print(f"{path.name} is being built by {holder}: waiting for it, to map it", flush=True)

    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locked(path.with_name(path.name + ".lock"), waiting=wait))
        except (OSError, ValueError) as e:  # another user's lock file, a file system without flock
            warnings.warn(f"building {path.name} without its lock ({e})", stacklevel=2)
        if _identity(path) != looked:  # built since this process looked (while it waited, say)
            mapped = _readable(path)
            if mapped is not None:
                return mapped
        train, test = build()
        blob = {
            "classes": train.classes,
            "train_images": train.images,
            "train_labels": train.labels,
            "test_images": test.images,
            "test_labels": test.labels,
        }
        atomic_write(path, lambda f: torch.save(blob, f), mode="wb")  # readable as the umask allows (a shared cache)
    return _mapped(path)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` names now (inode, modification time), None when none: a new one was written."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _readable(path: Path) -> tuple[ImageSet, ImageSet] | None:
    """The splits mapped from `path`, or None when it is missing or unreadable (said in a warning)."""
    if not path.exists():
        return None
    try:
        return _mapped(path)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: rebuild it
        warnings.warn(f"ignoring unreadable cache {path} ({e}); rebuilding it", stacklevel=3)
    return None


def _mapped(path: Path) -> tuple[ImageSet, ImageSet]:
    blob = torch.load(path, weights_only=True, mmap=True)
    train, test = (ImageSet(blob[f"{s}_images"], blob[f"{s}_labels"], blob["classes"]) for s in ("train", "test"))
    return train, test


def _first_per_class(labels: Tensor, k: int | None) -> Tensor:
    """Indices of the first k items of each class, in their original order (all when k is None)."""
    if k is None:
        return torch.arange(len(labels))
    order = torch.argsort(labels, stable=True)
    rank = torch.arange(len(labels)) - torch.searchsorted(labels[order], labels[order])
    return order[rank < k].sort().values


def _fit(image: Tensor, size: int) -> Tensor:
    """Resize the shorter side to `size` (antialiased) and center-crop to size x size."""
    if image.shape[-2:] != (size, size):
        image = TF.center_crop(TF.resize(image, [size], antialias=True), [size, size])
    return image


# ---- torchvision sets --------------------------------------------------------------------------


def _torchvision(name: str, root: Path, train: bool, size: int, download: bool, limit: int | None = None) -> ImageSet:
    from torchvision import datasets

    try:
        if name == "stl10":
            ds = datasets.STL10(str(root), split="train" if train else "test", download=download)
            images, labels = torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long()
        else:
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            ds = cls(str(root), train=train, download=download)
            images, labels = torch.from_numpy(ds.data).permute(0, 3, 1, 2), torch.tensor(ds.targets)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(
            f"{name} not found or corrupted under {root} ({e}); set data.download=true "
            f"to fetch it there, or point data.root at a copy"
        ) from None
    except OSError as e:
        raise FileNotFoundError(f"could not download {name} to {root}: {e}") from None
    keep = _first_per_class(labels, limit)
    images = images[keep].contiguous()
    if images.shape[-2:] != (size, size):
        images = torch.cat([TF.resize(part, [size, size], antialias=True) for part in images.split(1024)])
    return ImageSet(images, labels[keep], list(ds.classes))


# ---- image folders -----------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_decoders() -> Iterator[None]:
    """Silence torchvision's (>= 0.29) notice that its image decoders move to TorchCodec: they still work."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def eight_bits(image: Tensor) -> Tensor:
    """uint8 channels: a 16-bit image (a 16-bit PNG decodes to uint16) keeps its top byte."""
    return image if image.dtype == torch.uint8 else image.to(torch.int32).bitwise_right_shift(8).to(torch.uint8)


class ImageFiles(Dataset):
    """(path, label) pairs decoded to uint8 (3, size, size): shorter side resized, center crop."""

    def __init__(self, files: list[str], labels: list[int], classes: list[str], size: int):
        self.files, self.labels, self.classes, self.size = files, labels, classes, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            with quiet_decoders():
                image = decode_image(read_file(self.files[i]), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise ValueError(f"cannot decode image {self.files[i]}: {e}") from None
        return _fit(eight_bits(image), self.size), self.labels[i]


def loader_workers(asked: int) -> int:
    """`asked` loader workers, at most one per CPU this process may run on (its affinity: a Slurm
    allocation, taskset): more decode no faster, and torch warns about them."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(asked, cpus)


def _decode_all(split: Split, size: int, workers: int | None = None) -> ImageSet:
    files, classes = list(split.files), list(split.classes)
    if len(files) * 3 * size * size > MAX_RESIDENT_BYTES:
        raise ValueError(
            f"{len(files)} images at {size}x{size} under {Path(files[0]).parents[1]} do not fit in "
            f"{MAX_RESIDENT_BYTES / 2**30:.0f} GiB of memory; stream them (data.serve=stream)"
        )
    ds = ImageFiles(files, list(split.labels), classes, size)
    workers = loader_workers(8 if workers is None else workers) if len(ds) > 2000 else 0  # start-up beats tiny sets
    # filled in place, batch by batch: a list of batches then joined would hold the set twice
    images, labels = torch.empty(len(ds), 3, size, size, dtype=torch.uint8), torch.empty(len(ds), dtype=torch.int64)
    start = 0
    for x, y in DataLoader(ds, batch_size=512, num_workers=workers):
        images[start : start + len(x)], labels[start : start + len(x)] = x, y
        start += len(x)
    return ImageSet(images, labels, classes)
