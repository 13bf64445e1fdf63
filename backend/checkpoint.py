"""Checkpoints: atomic save, and loading a trained model for render/eval."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import ModelConfig, from_dict
from .errors import InputError
from .model import Manifold
from .runfolder import RunFolder


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run: RunFolder, device: torch.device) -> dict:
    if not run.latest.is_file():
        raise InputError(f"{run.root}: no checkpoint ({run.latest}); run 'backend train --run {run.root}' first.")
    try:
        return torch.load(run.latest, map_location=device, weights_only=False)
    except Exception as e:  # a truncated file can only come from outside tampering (saves are atomic)
        raise InputError(f"{run.latest}: unreadable checkpoint ({e}); delete it and train again.") from None


def model_config(ckpt: dict) -> ModelConfig:
    d = dict(ckpt["model_config"])
    # Checkpoints from before a setting existed behave as they were trained.
    d.setdefault("omega_dir", d.get("omega0", 30.0))
    d.setdefault("level_fade", 0.0)
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
