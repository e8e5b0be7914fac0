"""Where images come from: whole splits as uint8 tensors (small sets), or a streaming loader (large folders).

Small sets are decoded once and cached as one tensor file, so the next run starts in seconds; the
augmentations then run batched on the device (see batcher.py).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from ..errors import choices_error
from ..names import DATASETS
from ..store import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
CACHE_VERSION = 1
MAX_RESIDENT_BYTES = 32 * 2**30  # beyond this a folder is streamed (streaming_loader), not held in memory
FOLDER_LAYOUT = "expected <root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (or val/ for test)"


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
            raise ValueError(f"labels must be int64 (N,) with N={len(self.images)}; "
                             f"got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ABLATION_CACHE", Path.home() / ".cache" / "ablation"))


def load_dataset(name: str, root: str | Path | None = None, size: int = 32, download: bool = False,
                 cache_dir: str | Path | None = None, *, per_class: int | None = None,
                 **embedded_kw) -> tuple[ImageSet, ImageSet]:
    """(train, test) splits of `name` at size x size, decoded once and cached under `cache_dir`.

    `embedded_kw` (n_train, n_test, seed) go to make_embedded and are ignored for other sets.
    `per_class` keeps the first k training images of each class (a smaller study on the same
    classes); the test split stays whole, so accuracies stay comparable across caps.
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
        splits = {s: _scan(Path(root), s) for s in ("train", "test")}
        stamp = [[(p, *_stat(p)) for p in files] for files, _, _ in splits.values()]
        key = _cache_key(name, Path(root).resolve(), size, per_class, stamp)
        return _cached(cache_dir / f"folder-{size}-{key}.pt",
                       lambda: (_decode_all(*splits["train"], size, per_class), _decode_all(*splits["test"], size)))
    root = Path(root) if root is not None else cache_dir / "datasets"
    key = _cache_key(name, root.resolve(), size, per_class)
    return _cached(cache_dir / f"{name}-{size}-{key}.pt",
                   lambda: (_torchvision(name, root, True, size, download, per_class),
                            _torchvision(name, root, False, size, download)))


# ---- cache -------------------------------------------------------------------------------------

def _stat(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _cache_key(*parts: object) -> str:
    return hashlib.sha256(repr((CACHE_VERSION, *parts)).encode()).hexdigest()[:16]


def _cached(path: Path, build) -> tuple[ImageSet, ImageSet]:
    """Load the splits from `path`, or build them and write `path` atomically (temp file + rename)."""
    if path.exists():
        try:
            blob = torch.load(path, weights_only=True)
            train, test = (ImageSet(blob[f"{s}_images"], blob[f"{s}_labels"], blob["classes"])
                           for s in ("train", "test"))
            return train, test
        except Exception as e:  # a truncated or foreign file: rebuild it
            warnings.warn(f"ignoring unreadable cache {path} ({e}); rebuilding it", stacklevel=2)
    train, test = build()
    blob = {"classes": train.classes, "train_images": train.images, "train_labels": train.labels,
            "test_images": test.images, "test_labels": test.labels}
    atomic_write(path, lambda f: torch.save(blob, f), mode="wb")  # readable as the umask allows (a shared cache)
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

def _torchvision(name: str, root: Path, train: bool, size: int, download: bool,
                 limit: int | None = None) -> ImageSet:
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
        raise FileNotFoundError(f"{name} not found or corrupted under {root} ({e}); set data.download=true "
                                f"to fetch it there, or point data.root at a copy") from None
    except OSError as e:
        raise FileNotFoundError(f"could not download {name} to {root}: {e}") from None
    keep = _first_per_class(labels, limit)
    images = images[keep].contiguous()
    if images.shape[-2:] != (size, size):
        images = torch.cat([TF.resize(part, [size, size], antialias=True) for part in images.split(1024)])
    return ImageSet(images, labels[keep], list(ds.classes))


# ---- image folders -----------------------------------------------------------------------------

def _split_dir(root: Path, split: str) -> Path:
    names = ("test", "val") if split in ("test", "val") else (split,)
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no image folder at {root / names[0]} (looked for {', '.join(names)} under "
                            f"{root.resolve()}); {FOLDER_LAYOUT}")


def _scan(root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """Image files of a split, their labels, and the class names (from train/, sorted)."""
    classes = sorted(e.name for e in os.scandir(_split_dir(root, "train")) if e.is_dir())
    files, labels = [], []
    for d in sorted((e for e in os.scandir(_split_dir(root, split)) if e.is_dir()), key=lambda e: e.name):
        if d.name not in classes:
            raise ValueError(f"class folder {d.path} is not in {root / 'train'}; classes there: {', '.join(classes)}")
        found = sorted(e.path for e in os.scandir(d) if e.name.lower().endswith(IMAGE_EXTENSIONS))
        files += found
        labels += [classes.index(d.name)] * len(found)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {_split_dir(root, split)}; "
                                f"{FOLDER_LAYOUT}")
    return files, labels, classes


class ImageFiles(Dataset):
    """(path, label) pairs decoded to uint8 (3, size, size): shorter side resized, center crop."""

    def __init__(self, files: list[str], labels: list[int], classes: list[str], size: int):
        self.files, self.labels, self.classes, self.size = files, labels, classes, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            with warnings.catch_warnings():  # torchvision >= 0.29: decoders moving to TorchCodec; they still work
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(read_file(self.files[i]), mode=ImageReadMode.RGB)
        except RuntimeError as e:
            raise ValueError(f"cannot decode image {self.files[i]}: {e}") from None
        return _fit(image, self.size), self.labels[i]


def _decode_all(files: list[str], labels: list[int], classes: list[str], size: int,
                limit: int | None = None) -> ImageSet:
    keep = _first_per_class(torch.tensor(labels), limit).tolist()
    if len(keep) * 3 * size * size > MAX_RESIDENT_BYTES:
        raise ValueError(f"{len(keep)} images at {size}x{size} under {Path(files[0]).parents[1]} do not fit in "
                         f"{MAX_RESIDENT_BYTES / 2**30:.0f} GiB of memory; use streaming_loader for this folder")
    ds = ImageFiles([files[i] for i in keep], [labels[i] for i in keep], classes, size)
    workers = min(8, os.cpu_count() or 1) if len(ds) > 2000 else 0  # worker start-up beats tiny sets
    batches = list(DataLoader(ds, batch_size=512, num_workers=workers))
    return ImageSet(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), classes)


def streaming_loader(root: str | Path, split: str, size: int, batch_size: int, workers: int = 4,
                     seed: int = 0, shuffle: bool | None = None) -> DataLoader:
    """Batches of uint8 (B,3,size,size) images and int64 labels from a folder too big to hold in memory.

    Shuffles (seeded) and drops the last partial batch for the train split unless `shuffle` says
    otherwise; `.dataset.classes` names the classes.
    """
    shuffle = split == "train" if shuffle is None else shuffle
    ds = ImageFiles(*_scan(Path(root), split), size)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed), pin_memory=torch.cuda.is_available(),
                      persistent_workers=workers > 0)
