"""ImageNet-like folders: class subsets, streaming and resident serving, the per-experiment crop protocol.

Every test makes its own JPEG folder: images of 100-600 px per side, a colour per class.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
import two_processes as two
from PIL import Image
from test_cell import StopAfter
from test_grid import SHIPPED

from ablation import dist, store
from ablation.augment import parse_spec
from ablation.cell import Preempted, run_cell
from ablation.cli import main
from ablation.config import build_config
from ablation.data import folders, source_crop, stream
from ablation.data.folders import Split, scan
from ablation.data.sources import ImageFiles
from ablation.data.stream import StreamBatcher, UnreadableImage, decode_crops
from ablation.grid import load_experiment

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("amber", "blue", "cyan", "dusk")


def make_folder(root: Path, train: int = 60, test: int = 10, seed: int = 0) -> Path:
    """root/{train,test}/<class>/*.jpg: sides 100-600 px, a class colour plus coarse noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(100, 601, 2))
                colour = np.array([70 * c, 220 - 50 * c, 40 + 60 * (c % 2)], float)
                small = (colour + rng.normal(0, 40, (h // 16 + 1, w // 16 + 1, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(small).resize((w, h), Image.BILINEAR).save(folder / f"{i:04d}.jpg", quality=85)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("photos"))


# 24 images per class of the folder's 60 train (10 test) ones: 3 steps of 32 per epoch
TINY = [
    "data.name=folder",
    "data.size=16",
    "data.per_class=24",
    "data.workers=2",
    "model.width=8",
    "model.head_hidden=32",
    "model.out_dim=16",
    "train.epochs=2",
    "train.batch_size=32",
    "train.checkpoint_every=1",
    "eval.knn_k=20",
]
STREAM = ["data.serve=stream", "augment.mode=symmetric", "augment.views=crop+color"]
RESIDENT = [
    "data.serve=resident",
    "data.stored_size=24",
    "augment.base=crop(flip=false)",
    "augment.mode=asymmetric",
    "augment.views=color",
]


def cfg(root: Path, *extra: str):
    return build_config({}, TINY + [f"data.root={root}", *extra])


@pytest.fixture(scope="module")
def streamed_cell(photos, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("stream")
    return out, run_cell(cfg(photos, *STREAM), out, show_progress=False)


@pytest.fixture(scope="module")
def streamed(streamed_cell) -> dict:
    return streamed_cell[1]


# ---- class subsets and folder errors --------------------------------------------------------------


def test_class_subsets_list_file_and_cap(photos, tmp_path):
    split = scan(photos, "train", ["dusk", "blue"], per_class=5)
    assert split.classes == ("blue", "dusk") and split.labels == (0,) * 5 + (1,) * 5
    assert [Path(f).name for f in split.files[:5]] == [f"{i:04d}.jpg" for i in range(5)]  # file-name order
    listing = tmp_path / "two.txt"
    listing.write_text("# a comment\ncyan\n\namber\n")
    assert scan(photos, "test", str(listing)).classes == ("amber", "cyan")
    assert len(scan(photos, "test", str(listing)).files) == 20
    assert len(scan(photos, "train").files) == 240


def test_shipped_imagenet100_is_cmcs_hundred_wordnet_ids():
    names = folders.class_names("imagenet100")
    assert len(names) == len(set(names)) == 100
    assert all(n.startswith("n") and len(n) == 9 and n[1:].isdigit() for n in names)
    assert names[:3] == ["n02869837", "n01749939", "n02488291"] and names[-1] == "n02090622"


def _one_line_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "problem", ["missing root", "train is a file", "empty class", "missing class", "unknown class list", "symlink loop"]
)
def test_folder_problems_are_one_line_errors_before_anything_runs(photos, tmp_path, capsys, problem):
    root = tmp_path / "data"
    make_folder(root, train=2, test=1)
    extra = []
    if problem == "missing root":
        root = tmp_path / "nowhere"
        match = "no image folder at"
    elif problem == "train is a file":
        (tmp_path / "flat").mkdir()
        (tmp_path / "flat" / "train").write_text("not a folder")
        root, match = tmp_path / "flat", "no image folder at"
    elif problem == "empty class":
        for f in (root / "train" / "cyan").iterdir():
            f.unlink()
        match = f"class folder {root / 'train' / 'cyan'} has no images"
    elif problem == "missing class":
        extra, match = ["--set", "data.classes=[amber,bluee]"], "'bluee' is not a class folder .*did you mean 'blue'"
    elif problem == "unknown class list":
        extra, match = ["--set", "data.classes=imagenet10"], "no shipped class list .*did you mean 'imagenet100'"
    else:
        (root / "train" / "blue" / "loop.jpg").symlink_to("loop.jpg")
        match = re.escape(f"cannot read {root / 'train' / 'blue' / 'loop.jpg'} (Too many levels of symbolic links)")
    out = tmp_path / "cell"
    args = [
        "run",
        "--out",
        str(out),
        *[a for kv in TINY + STREAM for a in ("--set", kv)],
        "--set",
        f"data.root={root}",
        *extra,
    ]
    assert re.search(match, _one_line_error(args, capsys))
    assert not (out / "checkpoint.pt").exists()


def test_folder_only_keys_are_rejected_for_other_sets():
    with pytest.raises(ValueError, match=r"data.classes: only for data.name=folder"):
        build_config({}, ["data.classes=[a]"])
    with pytest.raises(ValueError, match=r"data.stored_size: 16 is below data.size 32"):
        build_config({}, ["data.name=folder", "data.root=x", "data.size=32", "data.stored_size=16"])


# ---- decoding and drawing crops ------------------------------------------------------------------


def test_reduced_scale_decode_matches_full_decode_then_crop(tmp_path):
    """A crop at least twice the output size is decoded at 1/2 scale (DCT scaling): it must match a
    full-resolution decode, crop and antialiased resize of the same box."""
    make_folder(tmp_path, train=1, test=1)
    image = Image.new("RGB", (600, 500))
    image.paste(Image.open(next((tmp_path / "train" / "amber").iterdir())).resize((600, 500)))
    image.save(tmp_path / "big.jpg", quality=95)
    crop = parse_spec("crop(scale_min=0.9,flip=false)").ops[0]
    # areas, ratios, x, y, flip, apply
    u = torch.tensor([[0.5] * source_crop.TRIES + [0.5] * source_crop.TRIES + [0.3, 0.7, 0.9, 0.0]])
    got = decode_crops(str(tmp_path / "big.jpg"), crop, u, 64)[0]
    box, _ = source_crop.boxes(crop, u, torch.tensor([500.0]), torch.tensor([600.0]))
    x0, y0, bw, bh = (int(v) for v in box[0])
    assert min(bw, bh) >= 128  # so the 1/2-scale path ran
    full = TF.pil_to_tensor(Image.open(tmp_path / "big.jpg").convert("RGB"))
    want = TF.resize(full[:, y0 : y0 + bh, x0 : x0 + bw], [64, 64], antialias=True)
    assert (got.float() - want.float()).abs().mean() < 3.0


@pytest.mark.skipif(not Path("/usr/include/jpeglib.h").exists(), reason="no libjpeg headers: no region decoding")
def test_region_decoding_equals_whole_image_decoding(photos, monkeypatch):
    """The C extension decodes only the rows and columns the crops need; the crops must be those of a
    whole-image decode (up to libjpeg's chroma upsampling at the region's edge)."""
    assert stream._jpegcrop is not None, "setup.py builds ablation/data/_jpegcrop where libjpeg's headers are"
    files = scan(photos, "train", per_class=24).files  # 96 images: the exact share varies less than with 32
    u = source_crop.draw(len(files) * 2, torch.Generator().manual_seed(3)).view(len(files), 2, source_crop.DRAWS)
    crop = parse_spec("crop").ops[0]
    region = torch.stack([decode_crops(f, crop, d, 96) for f, d in zip(files, u)])
    monkeypatch.setattr(stream, "_jpegcrop", None)
    whole = torch.stack([decode_crops(f, crop, d, 96) for f, d in zip(files, u)])
    diff = (region.int() - whole.int()).abs()
    assert diff.float().mean() < 0.05 and (diff.flatten(1).amax(1) == 0).float().mean() > 0.5


@pytest.mark.parametrize("spec", ["crop", "crop(scale_min=0.01,ratio_min=0.2,ratio_max=5)"])
@pytest.mark.parametrize("shape", [(375, 500), (40, 7)])
def test_source_boxes_are_the_crop_ops_boxes_for_the_same_uniforms(spec, shape):
    """The boxes drawn at the source of a folder are the `crop` op's (its redraw of boxes that do not
    fit, then torchvision's fallback) for the same uniforms, in the op's order of drawing them."""
    crop, (h, w), n = parse_spec(spec).ops[0], shape, 4000
    g = torch.Generator().manual_seed(5)
    areas, ratios = torch.rand(n, source_crop.TRIES, generator=g), torch.rand(n, source_crop.TRIES, generator=g)
    x, y, flip = (torch.rand(n, 1, generator=g) for _ in range(3))
    u = torch.cat([areas, ratios, x, y, flip, torch.zeros(n, 1)], 1)  # apply: always
    box, flipped = source_crop.boxes(crop, u, torch.full((n,), float(h)), torch.full((n,), float(w)))
    images = torch.zeros(1, 3, h, w).expand(n, 3, h, w)  # the op reads only the shape: no 9 GB of zeros
    want = crop.draw(images, torch.Generator().manual_seed(5))
    assert torch.equal(box, want["box"]) and torch.equal(flipped, want["flip"])


def test_one_crop_per_view_keeps_the_papers_crop_area():
    """The standard SimCLR view is one random resized crop of the full image: the mean area of
    torchvision's RandomResizedCrop on that image (0.43 of a 375 x 500 photo), not the ~0.26 of
    cropping twice, nor the 0.52 of clipping boxes that do not fit instead of redrawing them."""
    crop = parse_spec("crop").ops[0]
    n = 20000
    h, w = torch.full((n,), 375.0), torch.full((n,), 500.0)
    box, flip = source_crop.boxes(crop, source_crop.draw(n, torch.Generator().manual_seed(0)), h, w)
    area = box[:, 2] * box[:, 3] / (h * w)
    torch.manual_seed(0)
    image = torch.zeros(1, 375, 500)  # get_params reads only its size
    ref = torch.tensor(
        [T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)], dtype=torch.float32
    )  # (top, left, height, width)
    ref_area = ref[:, 2] * ref[:, 3] / (375 * 500)
    assert abs(area.mean() - ref_area.mean()) < 4 * (area.var() / n + ref_area.var() / n).sqrt()
    assert 0.48 < flip.float().mean().item() < 0.52
    assert (box[:, 0] >= 0).all() and (box[:, 0] + box[:, 2] <= w).all() and (box[:, 1] + box[:, 3] <= h).all()


@pytest.mark.parametrize(
    "views,base,mode",
    [("crop", "none", "symmetric"), ("none", "crop", "asymmetric"), ("crop+color", "none", "symmetric")],
)
def test_one_view_methods_take_the_first_source_crop(views, base, mode):
    """A one-view method (supervised) on a folder with its first crop at the source: the first crop drawn
    for the image, then the rest of the pipeline on the device (without device ops: the first view)."""
    proto = source_crop.split_source_crop(views, base, mode)
    source = source_crop.SourceViews(proto, 16, stored=True)
    x = torch.rand(6, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    one = source.one(x, torch.Generator().manual_seed(2))
    first, _ = source(x, torch.Generator().manual_seed(2))
    assert one.shape == first.shape == (6, 3, 16, 16)
    crops = source.crop_stored(x, torch.Generator().manual_seed(2))
    if views == "crop+color":  # colour drawn on the device for one view, not for two
        assert torch.equal(one, proto.views(crops[:, 0], _draws_after_crops(source, x, 2)))
    else:
        assert torch.equal(one, first) and torch.equal(one, crops[:, 0])


def _draws_after_crops(source, x, seed: int) -> torch.Generator:
    """The generator as the device ops see it: after the source crops' draws."""
    g = torch.Generator().manual_seed(seed)
    source.crop_stored(x, g)
    return g


def _batches(split: Split, shard=(0, 1), workers: int = 0, start: int = 0, decode: str = "workers"):
    crop = parse_spec("crop").ops[0]
    batcher = StreamBatcher(split, 16, shard, 24, crop, 2, workers, torch.device("cpu"), decode)
    return [x for x, _ in batcher.epoch(torch.Generator().manual_seed(11), start=start)]


def test_stream_batches_are_seeded_resumable_and_independent_of_workers(photos, monkeypatch):
    split = scan(photos, "train", per_class=12)  # 48 images: 3 steps of 16
    full = _batches(split)
    assert len(full) == 3 and full[0].shape == (16, 2, 3, 24, 24) and full[0].dtype == torch.uint8
    assert not torch.equal(full[0][:, 0], full[0][:, 1])  # two independent crops per image
    assert all(torch.equal(a, b) for a, b in zip(_batches(split, workers=2), full))
    assert all(torch.equal(a, b) for a, b in zip(_batches(split, start=1), full[1:]))
    monkeypatch.setattr(stream, "SCALES", ())  # full-resolution decodes in the workers, as decode_jpeg does
    full = _batches(split)
    device_decoded = _batches(split, decode="device")  # torchvision's batched decode_jpeg (CPU here)
    assert all((a.float() - b.float()).abs().mean() < 0.5 for a, b in zip(device_decoded, full))


def _rank(rank: int, init_file: str, out: str, root: str) -> None:
    two.join(rank, init_file)
    two.finish(rank, _batches(scan(root, "train", per_class=12), shard=(dist.rank(), dist.world()), workers=1), out)


@pytest.mark.slow
def test_two_ddp_processes_see_disjoint_shards_that_make_the_global_batch(photos, tmp_path):
    ranks = two.spawn(_rank, tmp_path, str(photos), start_method="fork")  # no re-import of torch in the children
    for step, whole in enumerate(_batches(scan(photos, "train", per_class=12))):
        a, b = ranks[0][step], ranks[1][step]
        assert len(a) == len(b) == 8 and torch.equal(torch.cat([a, b]), whole)


# ---- cells ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_streaming_cell_finishes(streamed):
    assert streamed["status"] == "finished" and streamed["epochs_done"] == 2
    assert streamed["metrics"]["linear_top1"] > 0.5  # four colours: far above chance (0.25)


def _embedding_rows(cell_dir: Path) -> list[dict]:
    rows = store.read_metrics(cell_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(isinstance(r[k], float) and math.isfinite(r[k]) for r in rows for k in ("pos_sim", "align", "uniform"))
    return rows


@pytest.mark.slow
def test_streaming_cell_logs_embeddings_of_a_fixed_streamed_batch(streamed_cell):
    """No resident images: the per-epoch measurement takes images spread over the batcher's files,
    cropped at the source from fixed draws."""
    _embedding_rows(streamed_cell[0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,serve", [("supervised", STREAM), ("byol", STREAM), ("supervised", [*RESIDENT, "data.stored_size=20"])]
)
def test_other_methods_train_on_folders_served_at_the_source(photos, tmp_path, monkeypatch, method, serve):
    """Labels of streamed batches reach supervised training; one view of source crops; BYOL's
    projections in the per-epoch log of a streamed folder. (Its own stored size and cache: the
    resident test above counts the files its decode writes.)"""
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    extra = ["method_args.predictor_hidden=16"] if method == "byol" else []
    result = run_cell(cfg(photos, *serve, f"method={method}", *extra), tmp_path / "cell", show_progress=False)
    assert result["status"] == "finished" and all(math.isfinite(v) for v in result["losses"])
    if method == "byol":
        _embedding_rows(tmp_path / "cell")
    else:
        assert result["metrics"]["linear_top1"] > 0.5  # four colours: far above chance (0.25)
        assert not any("uniform" in r for r in store.read_metrics(tmp_path / "cell"))


def test_stream_sample_spreads_over_the_classes_with_fixed_source_crops(photos):
    split = scan(photos, "train", per_class=12)
    crop = parse_spec("crop").ops[0]
    batcher = StreamBatcher(split, 16, (0, 1), 24, crop, 2, 0, torch.device("cpu"))
    sample = batcher.sample(5)
    assert sample.shape == (5, 2, 3, 24, 24) and sample.dtype == torch.uint8
    assert torch.equal(sample, batcher.sample(5))
    picked = [i * len(split.files) // 5 for i in range(5)]
    assert {split.labels[i] for i in picked} == set(split.labels)  # files are class by class; all are in
    u = source_crop.draw(10, torch.Generator().manual_seed(stream.SAMPLE_SEED)).view(5, 2, source_crop.DRAWS)
    assert torch.equal(sample[1], decode_crops(split.files[picked[1]], crop, u[1], 24))


@pytest.mark.slow
def test_streaming_cell_interrupted_mid_epoch_resumes_exactly(streamed, photos, tmp_path):
    with pytest.raises(Preempted):
        run_cell(cfg(photos, *STREAM), tmp_path, interrupt=StopAfter(2), show_progress=False)
    resumed = run_cell(cfg(photos, *STREAM), tmp_path, show_progress=False)
    assert resumed["resumed_at"] == [{"epoch": 0, "step": 2}]
    assert resumed["metrics"] == streamed["metrics"] and resumed["losses"] == streamed["losses"]


@pytest.mark.slow
def test_resident_cell_at_a_stored_size_finishes(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATION_CACHE", str(tmp_path / "cache"))
    result = run_cell(cfg(photos, *RESIDENT), tmp_path / "cell", show_progress=False)
    assert result["status"] == "finished" and result["metrics"]["linear_top1"] > 0.5
    (cached,) = (tmp_path / "cache").glob("folder-24-*.pt")  # decoded once, at the stored size
    blob = torch.load(cached, weights_only=True)
    assert blob["train_images"].shape == (96, 3, 24, 24)  # data.per_class=24 caps the training images
    assert blob["test_images"].shape == (40, 3, 24, 24)  # the test split stays whole
    _embedding_rows(tmp_path / "cell")  # the fixed batch: stored images, first crop drawn on the device


@pytest.mark.slow
def test_corrupt_jpeg_fails_the_cell_with_its_path_and_no_hang(tmp_path):
    root = make_folder(tmp_path / "data", train=8, test=2)
    bad = root / "train" / "blue" / "0003.jpg"
    bad.write_bytes(bad.read_bytes()[:600])  # truncated
    out = tmp_path / "cell"
    args = [a for kv in TINY + STREAM + [f"data.root={root}", "train.batch_size=8"] for a in ("--set", kv)]
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from ablation.cli import main; sys.exit(main())",
            "run",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 2 and f"cannot decode image {bad}" in run.stderr, run.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "failed" and str(bad) in result["reason"] and "\n" not in result["reason"]
    with pytest.raises(UnreadableImage, match=str(bad)):
        decode_crops(str(bad), None, torch.zeros(1, source_crop.DRAWS), 16)


def png16(path: Path, h: int = 40, w: int = 56) -> None:
    """A 16-bit RGB PNG (PIL writes none), pixel values spread over 0-65535."""
    pixels = (np.arange(h * w * 3, dtype=np.uint32) * 997 % 65536).astype(">u2").reshape(h, w * 3)
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_a_16_bit_png_is_read_as_8_bits_streamed_and_resident(tmp_path):
    png16(tmp_path / "deep.png")
    crops = decode_crops(str(tmp_path / "deep.png"), None, torch.zeros(1, source_crop.DRAWS), 16)
    image, _ = ImageFiles([str(tmp_path / "deep.png")], [0], ["a"], 16)[0]
    assert crops.dtype == image.dtype == torch.uint8 and int(image.max()) > 128


def test_an_empty_image_file_is_named_streamed_and_resident(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.touch()
    with pytest.raises(UnreadableImage, match=re.escape(f"cannot decode image {empty}: empty file")):
        decode_crops(str(empty), None, torch.zeros(1, source_crop.DRAWS), 16)
    with pytest.raises(ValueError, match=re.escape(f"cannot decode image {empty}")):
        ImageFiles([str(empty)], [0], ["a"], 16)[0]


# ---- the protocol per experiment on ImageNet-like presets ----------------------------------------


@pytest.mark.parametrize("preset", ["imagenet", "imagenet100"])
@pytest.mark.parametrize("name", SHIPPED)
def test_imagenet_presets_crop_once_per_view_from_the_full_image(name, preset):
    """Figure 5 (asymmetric: pairwise, pairwise_check): one shared first crop, then the targeted ops on
    one branch; budget sweeps the view mode on that protocol. The standard SimCLR experiments
    (symmetric): each view cropped once, independently, from the full image; a symmetric cell whose
    views have no crop (method_sensitivity's colour only) sees the centre square."""
    exp = load_experiment(name, preset)
    for cell in exp.cells:
        a = cell.config.augment
        got = source_crop.split_source_crop(a.views, a.base, a.mode).describe()
        if a.mode == "asymmetric" or name == "budget":
            assert got == {
                "first_crop": "crop(flip=false)",
                "crops_per_image": 1,
                "base": "none",
                "views": parse_spec(a.views).spec,
                "mode": a.mode,
            }, cell.label
        elif parse_spec(a.views).ops[0].name != "crop":
            assert a.base == "none" and got["first_crop"] is None and got["views"] == parse_spec(a.views).spec
        else:
            assert a.base == "none" and got["first_crop"] == "crop" and got["crops_per_image"] == 2, cell.label
            rest = a.views.split("+", 1)[1] if "+" in a.views else "none"
            assert got["views"] == parse_spec(rest).spec and got["base"] == "none"


def test_imagenet100_dry_run_prints_gpu_hours(tmp_path, capsys):
    assert main(["grid", "pairwise", "--preset", "imagenet100", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    images = 49 * 100 * folders.KNOWN_TRAIN_SIZES["imagenet100"]
    hours = images / 4800 / 3600 * 4  # a cell on 4 GPUs together
    assert f"{images:,} training images" in out
    assert f"about {hours:.2f} GPU-hours (4 GPUs a cell) at 4,800 images/s" in out
    assert math.isclose(hours, 143.7, abs_tol=0.01)


def test_grid_with_a_bad_folder_fails_before_any_cell(tmp_path, capsys):
    args = [
        "grid",
        "pairwise",
        "--preset",
        "imagenet100",
        "--executor",
        "local",
        "--results",
        str(tmp_path),
        "--set",
        f"data.root={tmp_path / 'missing'}",
    ]
    assert re.search(r"no image folder at .*missing/train", _one_line_error(args, capsys))
    assert not list(tmp_path.glob("*/*/result.json"))
