"""The cell's hot path on the device: precision, memory layout and compilation of the model.

On a GPU (precision and compile 'auto') the model runs under bf16 autocast on channels_last
input and is compiled with torch.compile; on a CPU it stays fp32 and eager, so CPU results stay
bit-exact and need no compiler. Every choice here comes from the config and the device, never
from a tensor's value, so none of it makes the host wait for the device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


def uses_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or 'auto' on a GPU."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(precision, device))


def model_input(x: Tensor, precision: str, device: torch.device) -> Tensor:
    """`x` in channels_last (the model's layout), already bf16 under bf16 autocast: one copy that does
    both, and half the bytes for the first convolution to read (autocast would cast it there anyway)."""
    dtype = torch.bfloat16 if uses_bf16(precision, device) else x.dtype
    return x.to(dtype=dtype, memory_format=torch.channels_last)


def uses_compile(setting: str, device: torch.device) -> bool:
    """torch.compile: 'always', or 'auto' on a GPU (on a CPU it costs more time than it saves on a small cell)."""
    return setting == "always" or (setting == "auto" and device.type == "cuda")


class CompileFailed(RuntimeError):
    """The first compiled step of a DDP cell failed: the cell stops (its message is one line)."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class CompiledStep:
    """The training network, compiled when asked, with a safe way back to eager.

    torch.compile compiles at the first forward and backward, so a compiler that fails does so
    in the first step. `run(step)` calls `step(net)`; when the first compiled call raises, the
    model's weights and buffers go back to what they were (the failed forward may have moved the
    batch-norm statistics), one line says why, and this step and all later ones run eager.
    Under DDP (`net` a DistributedDataParallel) a failed first step stops the cell with one line
    instead: a backward that failed leaves DDP's reduction unfinished, so an eager retry would
    raise, and the other ranks would wait in their all-reduce until the process group's timeout.
    """

    def __init__(
        self,
        model: nn.Module,
        net: nn.Module,
        enabled: bool,
        backend: str | Callable = "inductor",
        say: Callable[[str], None] = _say,
    ):
        self.model, self.eager, self.say = model, net, say
        self.distributed = isinstance(net, DistributedDataParallel)
        self.net, self.pending = net, False
        if enabled:
            try:
                self.net, self.pending = torch.compile(net, backend=backend), True
            except Exception as err:  # noqa: BLE001 - e.g. a Python version that torch.compile does not support
                self._fall_back(err)

    def _fall_back(self, err: Exception) -> None:
        self.say(
            f"torch.compile failed ({_first_line(err)}); running eager (set train.compile=never to skip compiling)"
        )
        self.net = self.eager

    def run(self, step: Callable[[nn.Module], Tensor]) -> Tensor:
        if not self.pending:
            return step(self.net)
        saved = {k: v.clone() for k, v in self.model.state_dict().items()}
        try:
            out = step(self.net)
        except Exception as err:  # noqa: BLE001 - any failure of the compiled first step: eager says whether it is real
            if self.distributed:
                raise CompileFailed(
                    f"torch.compile failed under DDP ({_first_line(err)}); no eager retry "
                    f"there (set train.compile=never to skip compiling)"
                ) from None
            self.model.load_state_dict(saved)
            self._fall_back(err)
            out = step(self.net)
        self.pending = False
        return out


def _first_line(err: BaseException) -> str:
    """'Type: first line' of the innermost cause (torch wraps a compiler's own error in its own)."""
    inner = getattr(err, "inner_exception", None) or err.__cause__
    while isinstance(inner, BaseException):
        err = inner
        inner = getattr(err, "inner_exception", None) or err.__cause__
    first = next(iter(str(err).strip().splitlines()), "")
    return f"{type(err).__name__}: {first[:200]}"
