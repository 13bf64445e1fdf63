"""Checkpoints: atomic save, and loading a trained model for render/eval.

A checkpoint holds tensors and plain values only (dicts, lists, numbers, strings): run folders
travel between machines, and unpickling anything else could run code, so files are loaded with
torch.load(weights_only=True) and one that needs more is refused."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

import torch

from .config import ModelConfig, from_dict
from .errors import InputError
from .model import Manifold
from .runfolder import RunFolder


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(_plain(obj), tmp)
    os.replace(tmp, path)


def load_checkpoint(run: RunFolder, device: torch.device) -> dict:
    if not run.latest.is_file():
        raise InputError(f"{run.root}: no checkpoint ({run.latest}); run 'backend train --run {run.root}' first.")
    try:
        return torch.load(run.latest, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise InputError(f"{run.latest}: refused: the checkpoint contains code or Python objects "
                             "(a checkpoint holds tensors and plain values only), so it was not loaded; "
                             "use one from a source you trust, or train again.") from None
        raise InputError(f"{run.latest}: unreadable checkpoint ({_first_line(e)}); delete it and train again.") from None
    except Exception as e:  # a truncated file can only come from outside tampering (saves are atomic)
        raise InputError(f"{run.latest}: unreadable checkpoint ({_first_line(e)}); delete it and train again.") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _plain(obj: Any) -> Any:
    """`obj` with numpy scalars turned into Python numbers (weights_only loading refuses numpy
    objects); everything else as it is."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def model_config(ckpt: dict) -> ModelConfig:
    d = dict(ckpt["model_config"])
    # Checkpoints from before a setting existed behave as they were trained.
    d.setdefault("omega_dir", d.get("omega0", 30.0))
    d.setdefault("level_fade", 0.0)
    d.setdefault("photo_gains", False)
    d.setdefault("omega_feat", d.get("omega0", 30.0))
    return from_dict(ModelConfig, d)


def model_state(ckpt: dict) -> dict:
    """The checkpoint's model state; models from before the footprint field have none."""
    state = dict(ckpt["model"])
    state.setdefault("field._extra_state", torch.zeros(0, 0, 0))
    return state


def load_model(run: RunFolder, device: torch.device, grid_backend: str = "auto") -> tuple[Manifold, dict]:
    """The trained model of RUN on `device`, in eval mode, and its checkpoint."""
    ckpt = load_checkpoint(run, device)
    aabb = ckpt["aabb"]
    model = Manifold(model_config(ckpt), aabb[0], aabb[1], ckpt["n_views"], grid_backend).to(device)
    model.load_state_dict(model_state(ckpt))
    model.eval()
    return model, ckpt
