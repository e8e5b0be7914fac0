"""Data: embedded set (deterministic, balanced, class only in shape), folders + cache, batching."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import two_processes as two
from PIL import Image

from ablation import sizing
from ablation.augment import TwoViews
from ablation.config import build_config
from ablation.data import DeviceBatcher, ImageSet, fits_on_device, load_dataset, make_embedded
from ablation.data.batcher import leaves_room, spread
from ablation.data.sources import ImageFiles, loader_workers

# ---- embedded ----------------------------------------------------------------------------------


def test_embedded_is_deterministic_balanced_and_typed():
    train, test = make_embedded(200, 50, size=24, seed=3)
    again, _ = make_embedded(200, 50, size=24, seed=3)
    other, _ = make_embedded(200, 50, size=24, seed=4)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    assert not torch.equal(train.images, other.images)
    assert not torch.equal(train.images[:50], test.images)  # independent draws
    assert train.images.shape == (200, 3, 24, 24) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and len(train.classes) == 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [20] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [5] * 10
    counts = torch.bincount(make_embedded(23, 7, seed=0)[0].labels, minlength=10)
    assert counts.max() - counts.min() <= 1


def test_embedded_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_train"):
        make_embedded(0, 10)


def _colour_features(images: torch.Tensor) -> torch.Tensor:
    """Mean and std per channel plus an 8-bin histogram per channel: position-free colour statistics."""
    x = images.float() / 255
    bins = (x * 7.999).long().flatten(2)
    hist = torch.nn.functional.one_hot(bins, 8).float().mean(2).flatten(1)
    return torch.cat([x.mean((2, 3)), x.std((2, 3)), hist], 1)


def _linear_accuracy(train: ImageSet, test: ImageSet) -> float:
    """Held-out accuracy of a ridge-regression (one-hot targets) linear classifier on colour features."""
    xtr, xte = _colour_features(train.images), _colour_features(test.images)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    xtr, xte = [torch.cat([(x - mu) / sd, torch.ones(len(x), 1)], 1) for x in (xtr, xte)]
    targets = torch.nn.functional.one_hot(train.labels, 10).float()
    w = torch.linalg.solve(xtr.T @ xtr + torch.eye(xtr.shape[1]), xtr.T @ targets)
    return ((xte @ w).argmax(1) == test.labels).float().mean().item()


def _class_tinted(s: ImageSet) -> ImageSet:
    """The set with a class-dependent colour cast (red up, green down by ~5 % per class)."""
    shift = torch.zeros(len(s), 3, 1, 1)
    shift[:, 0, 0, 0], shift[:, 1, 0, 0] = s.labels * 12.0, (9 - s.labels) * 12.0
    return ImageSet((s.images.float() * 0.5 + shift).round().to(torch.uint8), s.labels, s.classes)


@pytest.mark.slow
def test_embedded_colour_carries_no_class_information():
    train, test = make_embedded(2000, 1000, size=32, seed=0)
    # brightness / mean colour: every class mean lies within 4 standard errors of the overall mean
    mean_rgb = train.images.float().mean((2, 3)) / 255
    per_class = torch.stack([mean_rgb[train.labels == c].mean(0) for c in range(10)])
    standard_error = mean_rgb.std(0) / (len(train) / 10) ** 0.5
    assert ((per_class - mean_rgb.mean(0)) / standard_error).abs().max() < 4
    # a linear classifier on colour statistics stays near chance (0.10; SE ~0.01 on 1000 images) ...
    assert _linear_accuracy(train, test) < 0.15
    # ... and finds a class-dependent colour cast, so the check has power (~0.34)
    assert _linear_accuracy(_class_tinted(train), _class_tinted(test)) > 0.25


def _colour_match_rate(x: torch.Tensor, spec: str) -> float:
    """Fraction of augmented views whose nearest original by colour (per-channel mean and std) is
    their own image, over three seeded draws; chance is 1 / len(x)."""

    def colour(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.mean((2, 3)), t.std((2, 3))], 1)

    rates = []
    for seed in range(3):
        view, original = TwoViews(spec, mode="asymmetric")(x, torch.Generator().manual_seed(seed))
        nearest = torch.cdist(colour(view), colour(original)).argmin(1)
        rates.append((nearest == torch.arange(len(x))).float().mean().item())
    return sum(rates) / len(rates)


@pytest.mark.slow
def test_embedded_colour_shortcut_survives_crop_but_not_colour_distortion():
    x = make_embedded(256, 1, size=32, seed=0)[0].images.float() / 255
    # crops of one image share its colours: ~0.42 of 256 views find their own image by colour alone
    assert _colour_match_rate(x, "crop") > 0.3
    # colour distortion's jitter is wider than the palettes' spread: ~0.07 (0.14 with uniform RGB
    # palettes, where a network still matched crop+color views by colour)
    assert _colour_match_rate(x, "crop+color") < 0.1


def test_load_dataset_embedded_and_unknown_name():
    train, test = load_dataset("embedded", None, 16, False, None, n_train=20, n_test=10, seed=1)
    assert train.images.shape == (20, 3, 16, 16) and len(test) == 10
    with pytest.raises(ValueError, match=r"did you mean 'cifar10'.*choose from"):
        load_dataset("cifar-10", None, 32, False, None)


# ---- image folders and cache -------------------------------------------------------------------


def _write(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (20, 20)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    """train: 3 red 'a' (PNG), 2 blue 'b' (JPEG, non-square); val (not test): 1 of each."""
    root = tmp_path / "tiny"
    for i in range(3):
        _write(root / "train" / "a" / f"{i}.png", (255, 0, 0))
    for i in range(2):
        _write(root / "train" / "b" / f"{i}.jpg", (0, 0, 255), size=(40, 20))
    _write(root / "val" / "a" / "0.png", (255, 0, 0))
    _write(root / "val" / "b" / "0.JPEG", (0, 0, 255))
    return root


def test_folder_loads_resizes_and_labels(tiny_folder: Path, tmp_path: Path):
    train, test = load_dataset("folder", tiny_folder, 16, False, tmp_path / "cache")
    assert train.classes == ["a", "b"] and test.classes == ["a", "b"]
    assert train.images.shape == (5, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [0, 1]
    red = train.images[0].float().mean((1, 2))
    assert red[0] > 250 and red[1:].max() < 5
    blue = train.images[3].float().mean((1, 2))  # JPEG: close, not exact
    assert blue[2] > 240 and blue[:2].max() < 15
    one, whole = load_dataset("folder", tiny_folder, 16, False, tmp_path / "cache", per_class=1)
    assert one.labels.tolist() == [0, 1] and torch.equal(one.images, train.images[[0, 3]])
    assert torch.equal(whole.images, test.images)  # the cap is on training images only


def test_folder_resize_is_shorter_side_then_center_crop(tmp_path: Path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))  # W=40, H=20: blue margins, red middle 20 columns
    image.paste((255, 0, 0), (10, 0, 30, 20))
    image.save(tmp_path / "x.png")
    out, _ = ImageFiles([str(tmp_path / "x.png")], [0], ["x"], 10)[0]
    assert out.shape == (3, 10, 10)
    assert out[0, :, 1:-1].min() > 240 and out[2, :, 1:-1].max() < 15  # the crop keeps the middle


def test_cache_round_trip_and_invalidation(tiny_folder: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    first = load_dataset("folder", tiny_folder, 16, False, cache)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))
    second = load_dataset("folder", tiny_folder, 16, False, cache)
    for a, b in zip(first, second):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes
    if Path("/proc/self/maps").exists():  # mapped from the file, both times: no copy in host memory
        assert str(files[0]) in Path("/proc/self/maps").read_text()
    expected = first[0].images.clone()
    del first, second  # the file is rewritten in place below (the project never does): no mapping may be read
    # the second load comes from the file: a changed file is what the next load returns
    blob = torch.load(files[0], weights_only=True)
    blob["train_images"] = torch.zeros_like(blob["train_images"])
    torch.save(blob, files[0])
    assert load_dataset("folder", tiny_folder, 16, False, cache)[0].images.max() == 0
    # changing the data (a new image) gives a new key
    _write(tiny_folder / "train" / "a" / "9.png", (255, 0, 0))
    assert len(load_dataset("folder", tiny_folder, 16, False, cache)[0]) == 6
    assert len(list(cache.glob("*.pt"))) == 2
    # an unreadable cache file is rebuilt, with a warning
    files[0].write_bytes(b"not a tensor file")
    (tiny_folder / "train" / "a" / "9.png").unlink()
    with pytest.warns(UserWarning, match="unreadable cache"):
        assert torch.equal(load_dataset("folder", tiny_folder, 16, False, cache)[0].images, expected)


def test_cache_files_are_readable_as_the_umask_allows(tiny_folder: Path, tmp_path: Path):
    """A cache shared by a group: the file gets the usual permissions, not a temp file's 0600."""
    load_dataset("folder", tiny_folder, 16, False, tmp_path / "cache")
    umask = os.umask(0o022)
    os.umask(umask)
    (cached,) = (tmp_path / "cache").glob("*.pt")
    assert stat.S_IMODE(cached.stat().st_mode) == 0o666 & ~umask


def test_missing_data_gives_one_clear_error(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"nowhere.*train/<class>"):
        load_dataset("folder", missing, 32, False, tmp_path / "cache")
    with pytest.raises(ValueError, match=r"needs data.root"):
        load_dataset("folder", None, 32, False, tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found.*data.download=true"):
        load_dataset("cifar10", missing, 32, False, tmp_path / "cache")


# ---- batcher -----------------------------------------------------------------------------------


def _indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose first pixel encodes their index, labels = index."""
    images = torch.zeros(n, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return images, torch.arange(n)


def test_batcher_visits_every_index_once_as_floats():
    images, labels = _indexed(103)
    batcher = DeviceBatcher(images, labels, batch_size=10, drop_last=False)
    batches = list(batcher.epoch(torch.Generator().manual_seed(0)))
    assert len(batcher) == len(batches) == 11
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(103))
    x, y = batches[0]
    assert x.dtype == torch.float32 and torch.allclose(x, images[y].float() / 255)
    assert torch.equal(x[:, 0, 0, 0] * 255, y.float())
    dropped = DeviceBatcher(images, labels, batch_size=10)
    assert len(dropped) == 10 and len(torch.cat([y for _, y in dropped.epoch()]).unique()) == 100


def test_a_set_on_the_host_moves_as_uint8_and_is_converted_on_the_batches_device():
    """A set too big for the device: each batch crosses as uint8 (a quarter of the bytes of floats);
    the meta device stands in for a GPU. On the set's own device the batches are as before."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.moved: list[torch.dtype] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and kwargs.get("device", args[0].device) != args[0].device:
                self.moved.append(args[0].dtype)
            return func(*args, **kwargs)

    images, labels = _indexed(32)
    with Copies() as spy:
        x, y = next(DeviceBatcher(images, labels, 8, to="meta").epoch(torch.Generator().manual_seed(0)))
    assert (x.device.type, x.dtype, x.shape, y.device.type) == ("meta", torch.float32, (8, 3, 2, 2), "meta")
    assert spy.moved == [torch.uint8, torch.int64]
    here = DeviceBatcher(images, labels, 8, to="cpu").epoch(torch.Generator().manual_seed(0))
    for (a, ya), (b, yb) in zip(here, DeviceBatcher(images, labels, 8).epoch(torch.Generator().manual_seed(0))):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_batcher_resume_equals_tail_of_full_epoch():
    images, labels = _indexed(64)
    batcher = DeviceBatcher(images, labels, batch_size=8)
    full = [y for _, y in batcher.epoch(torch.Generator().manual_seed(7))]
    tail = [y for _, y in batcher.epoch(torch.Generator().manual_seed(7), start=3)]
    assert len(tail) == 5 and all(torch.equal(a, b) for a, b in zip(full[3:], tail))
    with pytest.raises(ValueError, match="start"):
        batcher.epoch(None, start=9)


def test_batcher_shards_partition_each_global_batch():
    images, labels = _indexed(50)
    whole = [y for _, y in DeviceBatcher(images, labels, 12).epoch(torch.Generator().manual_seed(1))]
    ranks = [
        [y for _, y in DeviceBatcher(images, labels, 12, shard=(r, 4)).epoch(torch.Generator().manual_seed(1))]
        for r in range(4)
    ]
    for step, batch in enumerate(whole):
        parts = [ranks[r][step] for r in range(4)]
        assert [len(p) for p in parts] == [3] * 4 and torch.equal(torch.cat(parts), batch)
    with pytest.raises(ValueError, match="shard"):
        DeviceBatcher(images, labels, 12, shard=(4, 4))


def test_measurement_sample_spreads_over_the_set_and_repeats():
    """The per-epoch measurement batch: evenly strided, so a set stored class by class gives every class."""
    assert spread(10, 4).tolist() == [0, 2, 5, 7] and spread(3, 5).tolist() == [0, 1, 2] and spread(0, 5).numel() == 0
    labels = torch.arange(6).repeat_interleave(20)  # six classes in blocks, as folders store them
    batcher = DeviceBatcher(labels.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8).contiguous(), labels, 8)
    sample = batcher.sample(12)
    assert sample.shape == (12, 3, 2, 2) and torch.equal(sample, batcher.sample(12))
    assert set(sample[:, 0, 0, 0].tolist()) == set(range(6))


def test_loader_workers_stay_within_the_cpus_this_process_may_use():
    cpus = len(os.sched_getaffinity(0))
    assert loader_workers(1) == 1 and loader_workers(0) == 0 and loader_workers(cpus + 7) == cpus


def test_fits_on_device_cpu_without_counting_the_step():
    def never() -> float:
        raise AssertionError("the step is counted on a GPU only")

    assert fits_on_device(10**12, "cpu", never)


def test_a_resident_set_leaves_room_for_the_step_beside_it():
    """ImageNet-100's set at 256 px (about 25 GB) on an 80 GB GPU, beside a ResNet-50 step at 224 px:
    on the device at 128 images per rank (the imagenet100 preset's 512 over 4 GPUs), kept on the host
    at 1,024, where the set alone would still fit in half of the free memory (the rule before)."""
    cfg = build_config(
        {}, ["model.encoder=resnet50", "model.cifar_stem=false", "data.size=224", "train.precision=bf16"]
    )
    set_bytes, free = 126_689 * 3 * 256 * 256, 79e9
    assert set_bytes <= 0.5 * free
    assert leaves_room(set_bytes, sizing.step_bytes(cfg, 128), free)
    assert not leaves_room(set_bytes, sizing.step_bytes(cfg, 1024), free)


# ---- real data ---------------------------------------------------------------------------------


@pytest.mark.cifar
def test_cifar10_jpeg_copy_loads_as_folder(cifar_root: Path, tmp_path: Path):
    train, test = load_dataset("folder", cifar_root, 32, False, tmp_path, per_class=20)
    assert train.classes[:3] == ["airplane", "automobile", "bird"] and len(train.classes) == 10
    assert train.images.shape == (200, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [20] * 10
    direct = torch.from_numpy(np.array(Image.open(cifar_root / "train/airplane/0000.jpg")))
    assert (train.images[0].permute(1, 2, 0).int() - direct.int()).abs().max() <= 2  # same pixels (decoders)
    assert 80 < train.images.float().mean() < 160  # natural-image brightness, not blank


BUILD_ONCE = """
import sys, time
from pathlib import Path
import torch
from ablation.data import sources
from ablation.data.sources import ImageSet

out, i, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def build():
    (out / "builds").open("a").write(i + "\\n")
    while len(list(out.glob("started.*"))) < n:  # until every process is on its way to the lock
        time.sleep(0.05)
    time.sleep(1.0)
    split = ImageSet(torch.full((4, 3, 2, 2), int(i), dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ["a"])
    return split, split

(out / f"started.{i}").touch()
train, _ = sources._cached(out / "set.pt", build)
print("value", int(train.images[0, 0, 0, 0]))
"""


def test_a_set_is_built_once_while_the_other_processes_wait_and_map_it(tmp_path: Path):
    """Three processes need the same decoded set at once (the ranks of a node): one builds it, the
    others wait on its lock, say so, and map the file it wrote."""
    n = 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD_ONCE, str(tmp_path), str(i), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(1, n + 1)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    (builder,) = (tmp_path / "builds").read_text().split()
    assert all(f"value {builder}" in out for out, _ in outs)
    waits = sum("is being built by host" in out for out, _ in outs)
    assert 1 <= waits <= n - 1  # the others said that they waited (a very late one would find the file and map it)


def test_a_cache_whose_lock_cannot_be_taken_is_built_without_it(tmp_path: Path):
    """Another user's lock file (not writable here), a file system without flock: built as before the
    lock existed, with a warning, never refused."""
    from ablation.data import sources

    lock = tmp_path / "set.pt.lock"
    lock.mkdir()  # opening it for writing fails, as another user's 0644 file would for us
    split = ImageSet(torch.ones(2, 3, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a"])
    with pytest.warns(UserWarning, match="without its lock"):
        train, _ = sources._cached(tmp_path / "set.pt", lambda: (split, split))
    assert torch.equal(train.images, split.images) and (tmp_path / "set.pt").exists()


def _resident_worker(rank: int, init_file: str, out: str) -> None:
    from ablation.data.loading import resident

    two.join(rank, init_file)
    asked = ("auto", "never")[rank]  # as two GPUs with different free memory would answer
    two.finish(rank, resident(asked, 10**6, torch.device("cpu"), lambda: 0.0), out)


def test_ranks_agree_on_where_the_training_set_lives(tmp_path: Path):
    """A rank whose set does not fit keeps every rank's set off the device (their shuffles must agree)."""
    assert two.spawn(_resident_worker, tmp_path, start_method="fork") == [False, False]
