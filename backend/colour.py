"""Colour convention (one place): images are 8-bit sRGB read as value/255 and written as
round(value*255); the model works in linear RGB; PNG output is sRGB, EXR output is linear.
Functions accept numpy arrays or torch tensors."""
from __future__ import annotations


def _lib(x):
    if type(x).__module__.startswith("torch"):
        import torch
        return torch
    import numpy
    return numpy


def linear_to_srgb(x):
    lib = _lib(x)
    x = lib.clip(x, 0.0, 1.0) if lib.__name__ == "numpy" else x.clamp(0.0, 1.0)
    lo = 12.92 * x
    hi = 1.055 * lib.clip(x, 0.0031308, None) ** (1 / 2.4) - 0.055 if lib.__name__ == "numpy" \
        else 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055
    return lib.where(x <= 0.0031308, lo, hi)


def srgb_to_linear(x):
    lib = _lib(x)
    lo = x / 12.92
    hi = ((lib.clip(x, 0.04045, None) if lib.__name__ == "numpy" else x.clamp_min(0.04045)) + 0.055) / 1.055
    return lib.where(x <= 0.04045, lo, hi ** 2.4)


def to_u8(x):
    """[0, 1] -> uint8 round(x * 255), NaN -> 0 (round half to even, numpy and torch alike)."""
    lib = _lib(x)
    if lib.__name__ == "numpy":
        x = lib.nan_to_num(lib.asarray(x, dtype=lib.float32), nan=0.0)
        return lib.round(lib.clip(x, 0.0, 1.0) * 255.0).astype(lib.uint8)
    return (x.float().nan_to_num(0.0).clamp(0.0, 1.0) * 255.0).round().to(lib.uint8)
