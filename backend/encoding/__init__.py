"""The multi-resolution hash encoding, one folder: swapping the encoder touches only this package.
The rest of the backend uses the names imported below (and `doctor` the tcnn self-check).

    layout.py          parameter layout and constants shared by every implementation (numpy)
    encoder.py         `Encoder`, the interface of an implementation, and its pixel `Weights`
    registry.py        the implementations by name (--grid-backend): one entry each
    reference.py       plain PyTorch functions: every test's reference, twins of the fused kernels
    torch_encoder.py   `TorchEncoder` on reference.py: the CPU path
    triton_kernels.py  fused CUDA kernels (Triton) and their launches, the twins of reference.py
    triton_encoder.py  `TritonEncoder`: the kernels made differentiable
    tcnn.py            `TcnnEncoder`: optional tiny-cuda-nn, behind a child-process self-check
    grid.py            `HashGrid`, the torch module the model uses; the implementation is an argument
"""
from .encoder import Encoder, Weights
from .grid import HashGrid
from .layout import Level, log2_footprint_offset, n_params, normalisation
from .registry import BACKENDS, ENCODERS, check_backend

__all__ = ["BACKENDS", "ENCODERS", "Encoder", "HashGrid", "Level", "Weights", "check_backend",
           "log2_footprint_offset", "n_params", "normalisation"]
