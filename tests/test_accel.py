"""The hot path: no host-device wait in a training step, bf16 channels_last input, torch.compile
against eager, and the eager fallback when compiling fails."""
from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ablation import accel
from ablation.augment import TwoViews
from ablation.cell import build_model, build_optimisation, generator, train_step
from ablation.config import build_config
from ablation.data import DeviceBatcher

TINY = ["data.size=16", "model.width=4", "model.head_hidden=16", "model.out_dim=8", "train.batch_size=16",
        "augment.mode=symmetric"]
# aten ops that read a device value on the host (item, float(t), bool(t), `if t:`) or whose output
# shape depends on values (boolean-mask indexing): each makes the host wait for a GPU.
SYNCING = {"_local_scalar_dense", "is_nonzero", "item", "nonzero", "masked_select", "unique", "_unique2",
           "unique_consecutive", "equal", "repeat_interleave"}


class HostReads(TorchDispatchMode):
    """Records where every syncing op is called from."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name.split("::")[-1] in SYNCING:
            self.calls.append(f"{func}\n" + "".join(traceback.format_stack(limit=6)[:-1]))
        return func(*args, **(kwargs or {}))


def _cell(*extra: str):
    cfg = build_config({}, TINY + list(extra))
    model = build_model(cfg, torch.device("cpu"))
    optimizer, scheduler = build_optimisation(cfg, model, steps=4)
    return cfg, model, optimizer, scheduler


# blur is left out: kornia's gaussian_blur2d checks sigma > 0 with bool() on the tensor it is given
@pytest.mark.parametrize("optim", ["lars", "sgd"])
def test_training_steps_never_read_the_device_from_the_host(optim):
    cfg, model, optimizer, scheduler = _cell(f"optim.name={optim}",
                                             "augment.views=crop+color+cutout+noise+rotate+solarize")
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    batcher = DeviceBatcher(images, torch.zeros(64, dtype=torch.long), 16)
    views, cpu = TwoViews(cfg.augment.views, mode="symmetric"), torch.device("cpu")
    net = accel.CompiledStep(model, model, enabled=False)
    losses = []
    with HostReads() as spy:
        for step, (x, _) in enumerate(batcher.epoch(generator(cpu, 0, 0))):
            losses.append(net.run(lambda m: train_step(m, views, x, generator(cpu, 0, 0, step), optimizer,  # noqa: B023
                                                       scheduler, cfg)))
    assert len(losses) == 4 and not spy.calls, "\n".join(spy.calls)


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


def _train(steps: int, compiled: bool, said: list[str], backend="inductor") -> tuple[list[float], dict]:
    cfg, model, optimizer, scheduler = _cell("augment.views=crop+color")
    cpu = torch.device("cpu")
    net = accel.CompiledStep(model, model, compiled, backend=backend, say=said.append)
    x = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    losses = [float(net.run(lambda m: train_step(m, TwoViews(cfg.augment.views, mode="symmetric"), x,
                                                 generator(cpu, 0, 0, s), optimizer, scheduler, cfg)))  # noqa: B023
              for s in range(steps)]
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


def test_compiled_and_eager_steps_give_the_same_loss():
    """Inductor on the CPU (a C++ compiler builds the kernels: tens of seconds the first time)."""
    eager, _ = _train(3, False, [])
    said: list[str] = []
    compiled, _ = _train(3, True, said)
    assert not said, said  # it compiled
    assert compiled == pytest.approx(eager, rel=1e-4)
