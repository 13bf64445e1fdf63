"""The multi-resolution hash encoding, one folder: swapping the encoder touches only this package.

    layout.py          parameter layout and constants shared by every implementation (numpy)
    reference.py       plain PyTorch implementation: the CPU path and every test's reference
    triton_kernels.py  fused CUDA kernels (Triton), the twin of reference.py
    tcnn.py            optional tiny-cuda-nn path, behind a child-process self-check
    grid.py            `HashGrid`, the torch module the model uses; the backend is an argument
"""
from .grid import BACKENDS, HashGrid, check_backend
from .layout import n_params

__all__ = ["BACKENDS", "HashGrid", "check_backend", "n_params"]
