"""Checkpoints: atomic save, and loading a trained model for render/eval."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import InputError
from .model import Manifold, ModelConfig
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


def load_model(run: RunFolder, device: torch.device) -> tuple[Manifold, dict]:
    ckpt = load_checkpoint(run, device)
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    aabb = ckpt["aabb"]
    model = Manifold(cfg, aabb[0], aabb[1], ckpt["n_views"]).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    model.grid.coherent = True          # loaded models render frames: points come in pixel order
    return model, ckpt
