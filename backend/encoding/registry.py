"""The hash encoding's implementations by name (--grid-backend): one entry each.

An entry names the module of this package that holds its `Encoder` subclass (encoder.py),
imported on first use (Triton and tiny-cuda-nn are optional). A new implementation is that
module, its entry here and its choice in config.GRID_BACKEND (the names and labels users see).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from ..config import GRID_BACKEND
from ..errors import DeviceError
from .encoder import Encoder


@dataclass(frozen=True)
class Entry:
    module: str                 # the module of this package that defines it
    cls: str                    # its Encoder subclass
    needs_cuda: bool = False    # CUDA tensors only: on others the fallback computes the same function
    missing: str = ""           # what to do when its module cannot be imported

    def load(self) -> type[Encoder]:
        return getattr(importlib.import_module(f".{self.module}", __package__), self.cls)


ENCODERS: dict[str, Entry] = {
    "torch": Entry("torch_encoder", "TorchEncoder"),
    "triton": Entry("triton_encoder", "TritonEncoder", needs_cuda=True,
                    missing="Triton cannot be imported; pip install triton."),
    "tcnn": Entry("tcnn", "TcnnEncoder"),
}
AUTO = ("triton", "torch")      # "auto": the first of these that runs on the tensors' device
FALLBACK = "torch"              # runs on every device
BACKENDS = tuple(c[0] for c in GRID_BACKEND.choices)     # "auto" and every entry


def encoder_class(name: str, device: torch.device) -> type[Encoder]:
    """The implementation that computes `name`'s encoding on tensors of `device`."""
    for n in AUTO if name == "auto" else (name, FALLBACK):
        if ENCODERS[n].needs_cuda and device.type != "cuda":
            continue
        try:
            return _load(n)
        except DeviceError:
            if n == name:
                raise
    raise AssertionError(f"{FALLBACK} runs on every device")


def check_backend(name: str) -> str:
    """`name` if this machine can run it, else DeviceError naming --grid-backend and the fix
    (tcnn: accepted only after its self-check passes in a child process)."""
    if name not in BACKENDS:
        raise DeviceError(f"--grid-backend {name}: choose {', '.join(BACKENDS)}.")
    if name == "auto":
        return name
    if ENCODERS[name].needs_cuda and not torch.cuda.is_available():
        raise DeviceError(f"--grid-backend {name} needs a CUDA GPU; use --grid-backend auto.")
    _load(name).check()
    return name


def _load(name: str) -> type[Encoder]:
    entry = ENCODERS[name]
    try:
        return entry.load()
    except ImportError:
        raise DeviceError(f"--grid-backend {name}: {entry.missing}") from None
