"""The hot path: no host-device wait in a training step of any method, bf16 channels_last input,
torch.compile against eager, and the eager fallback when compiling fails."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ablation import accel
from ablation.augment import TwoViews
from ablation.config import build_config
from ablation.data import DeviceBatcher
from ablation.training import build_optimisation, generator, initial_method, train_step

TINY = [
    "data.size=16",
    "model.width=4",
    "model.head_hidden=16",
    "model.out_dim=8",
    "train.batch_size=16",
    "augment.mode=symmetric",
]
# aten ops that read a device value on the host (item, float(t), bool(t), `if t:`) or whose output
# shape depends on values (boolean-mask indexing): each makes the host wait for a GPU.
SYNCING = {
    "_local_scalar_dense",
    "is_nonzero",
    "item",
    "nonzero",
    "masked_select",
    "unique",
    "_unique2",
    "unique_consecutive",
    "equal",
    "repeat_interleave",
}
# a tensor made from Python data (torch.tensor([...]), as_tensor, `t[i] = 0.0`): made on the host, so
# on a GPU it is a host-to-device copy, which waits for the device's queue
FROM_PYTHON = {"lift_fresh", "lift_fresh_copy"}
EVERY_AUGMENTATION = "crop+color+blur+sobel+cutout+noise+rotate+solarize"


class HostTraffic(TorchDispatchMode):
    """Records where every op that would make the host wait for a GPU is called from: a read of a device
    value, a tensor from Python data, a write through a boolean mask (its nonzero syncs on a GPU).
    It sees the ops on the CPU as they would run on a GPU, so the CPU suite checks the GPU's step."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        masked = name in ("index_put", "index_put_") and any(i is not None and i.dtype == torch.bool for i in args[1])
        if name in SYNCING or name in FROM_PYTHON or masked:
            self.calls.append(f"{func}\n" + "".join(traceback.format_stack(limit=6)[:-1]))
        return func(*args, **(kwargs or {}))


def _cell(*extra: str):
    cfg = build_config({}, TINY + list(extra))
    model = initial_method(cfg, torch.device("cpu"), 10)
    optimizer, scheduler = build_optimisation(cfg, model, steps=4)
    return cfg, model, optimizer, scheduler


def _traffic(extra: list[str], views=None, device: str = "cpu") -> tuple[list, list[str]]:
    """The losses of 4 training steps (every augmentation, the method of `extra`) and where they made
    the host wait; `views` wraps the views (a test adds its own traffic there)."""
    cfg, model, optimizer, scheduler = _cell(f"augment.views={EVERY_AUGMENTATION}", *extra)
    dev = torch.device(device)
    model.to(dev)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, device=dev)
    batcher = DeviceBatcher(images, torch.arange(64) % 10, 16)
    two = TwoViews(cfg.augment.views, mode="symmetric")
    views = views(two) if views else two
    net = accel.CompiledStep(model, model, enabled=False)
    losses = []
    with HostTraffic() as spy:
        for step, (x, y) in enumerate(batcher.epoch(generator(dev, 0, 0))):
            losses.append(
                net.run(
                    lambda m, x=x, y=y, step=step: train_step(
                        m,
                        model,
                        views,
                        x,
                        y,
                        generator(dev, 0, 0, step),
                        optimizer,
                        scheduler,
                        cfg,
                        (step + 1, 4),
                    )
                )
            )
    return losses, spy.calls


METHODS = [
    ["optim.name=lars"],
    ["optim.name=sgd"],
    ["loss.name=margin", "loss.semi_hard=true"],
    ["method=supervised"],
    ["method=byol", "method_args.predictor_hidden=16"],
    ["method=simsiam", "method_args.predictor_hidden=16"],
    ["method=barlow_twins"],
]


# every method: SimCLR with each optimiser, and the other methods' losses and updates (BYOL's target)
@pytest.mark.parametrize("extra", METHODS)
def test_training_steps_never_make_the_host_wait_for_the_device(extra):
    losses, calls = _traffic(extra)
    assert len(losses) == 4 and not calls, "\n".join(calls)


def _masked_write(two):
    def views(x, g):
        v1, v2 = two(x, g)
        v1[v1 > 0.5] = 0.0
        return v1, v2

    return views


def _tensor_from_a_list(two):
    def views(x, g):
        v1, v2 = two(x, g)
        return v1 * torch.tensor([0.5, 1.0, 2.0], device=x.device)[:, None, None], v2

    return views


def _item(two):
    def views(x, g):
        v1, v2 = two(x, g)
        return v1 * v1.mean().item(), v2

    return views


@pytest.mark.parametrize("added", [_masked_write, _tensor_from_a_list, _item])
def test_the_check_catches_a_host_wait_added_to_the_step(added):
    _, calls = _traffic(["optim.name=lars"], views=added)
    assert sum("test_accel.py" in call for call in calls) >= 4, "\n".join(calls)  # the added line, every step


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("extra", METHODS)
def test_training_steps_on_a_gpu_never_synchronise(extra):
    """CUDA's own count: any synchronising call in the steps after the first raises."""
    _traffic(extra, device="cuda")  # the first steps: lazy initialisation (cuBLAS, the allocator) may sync
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses, _ = _traffic(extra, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(losses) == 4


def test_model_input_is_channels_last_and_bf16_only_under_bf16():
    x = torch.rand(2, 3, 8, 8)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    fp32 = accel.model_input(x, "auto", cpu)
    assert fp32.dtype == torch.float32 and fp32.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fp32, x)
    bf16 = accel.model_input(x, "bf16", cpu)
    assert bf16.dtype == torch.bfloat16 and bf16.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(bf16, x.to(torch.bfloat16))
    assert accel.uses_bf16("auto", cuda) and not accel.uses_bf16("fp32", cuda) and not accel.uses_bf16("auto", cpu)
    assert accel.uses_compile("auto", cuda) and not accel.uses_compile("auto", cpu)
    assert accel.uses_compile("always", cpu) and not accel.uses_compile("never", cuda)


def _train(steps: int, compiled: bool, said: list[str], backend="inductor", *extra: str) -> tuple[list[float], dict]:
    cfg, model, optimizer, scheduler = _cell("augment.views=crop+color", *extra)
    cpu = torch.device("cpu")
    net = accel.CompiledStep(model, model, compiled, backend=backend, say=said.append)
    x, y = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 10
    losses = [
        float(
            net.run(
                lambda m, s=s: train_step(
                    m,
                    model,
                    TwoViews(cfg.augment.views, mode="symmetric"),
                    x,
                    y,
                    generator(cpu, 0, 0, s),
                    optimizer,
                    scheduler,
                    cfg,
                    (s + 1, steps),
                )
            )
        )
        for s in range(steps)
    ]
    return losses, model.state_dict()


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here\nsecond line")


def test_a_failed_compilation_falls_back_to_eager_with_one_line_and_the_same_result():
    said: list[str] = []
    losses, state = _train(2, True, said, backend=_failing_backend)
    eager_losses, eager_state = _train(2, False, [])
    assert len(said) == 1 and "\n" not in said[0] and "torch.compile failed" in said[0], said
    assert "no compiler here" in said[0] and "train.compile=never" in said[0]
    assert losses == eager_losses  # the failed forward's batch-norm update was undone
    assert all(torch.equal(state[k], eager_state[k]) for k in state)


def test_a_failed_compilation_under_ddp_stops_the_cell_with_one_line_and_no_eager_retry(tmp_path):
    """One process of a DDP group (gloo, in this process): the eager retry that one process does is
    what would hang several, so under DDP the first step's failure is the cell's, in one line."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    cfg, model, optimizer, scheduler = _cell("augment.views=crop+color")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        said: list[str] = []
        net = accel.CompiledStep(model, DistributedDataParallel(model), True, backend=_failing_backend, say=said.append)
        cpu, calls = torch.device("cpu"), []

        def step(m):
            calls.append(m)
            return train_step(
                m,
                model,
                TwoViews(cfg.augment.views, mode="symmetric"),
                torch.rand(16, 3, 16, 16),
                torch.arange(16) % 10,
                generator(cpu, 0, 0, 0),
                optimizer,
                scheduler,
                cfg,
                (1, 2),
            )

        with pytest.raises(accel.CompileFailed) as failed:
            net.run(step)
    finally:
        dist.destroy_process_group()
    message = str(failed.value)
    assert "\n" not in message and "under DDP" in message and "no compiler here" in message
    assert "train.compile=never" in message and len(calls) == 1 and not said  # no eager retry


@pytest.mark.slow  # inductor compiles C++ kernels in worker processes
def test_compiled_and_eager_steps_give_the_same_loss():
    """Inductor on the CPU (a C++ compiler builds the kernels: tens of seconds the first time)."""
    eager, _ = _train(3, False, [])
    said: list[str] = []
    compiled, _ = _train(3, True, said)
    assert not said, said  # it compiled
    assert compiled == pytest.approx(eager, rel=1e-4)


@pytest.mark.slow  # dynamo traces each method's step: seconds each; the fast lane keeps the fallback tests above
@pytest.mark.parametrize(
    "extra",
    [
        ["method=supervised"],
        ["method=byol", "method_args.predictor_hidden=16"],
        ["method=simsiam", "method_args.predictor_hidden=16"],
        ["method=barlow_twins"],
    ],
)
def test_every_method_compiles_without_falling_back(extra):
    """The graph capture of each method's networks (BYOL's no-grad target too), with a backend that
    compiles nothing, so it is quick; inductor's kernels are checked on SimCLR above."""
    said: list[str] = []
    compiled, state = _train(2, True, said, "aot_eager", *extra)
    eager, eager_state = _train(2, False, [], "aot_eager", *extra)
    assert not said, said
    assert compiled == eager and all(torch.equal(state[k], eager_state[k]) for k in state)
