"""Checkpoints: atomic save, and loading a trained model for render/eval.

A checkpoint holds tensors and plain values only (dicts, lists, numbers, strings): run folders
travel between machines, and unpickling anything else could run code, so files are loaded with
torch.load(weights_only=True) and one that needs more is refused."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

import torch

from .config import ModelConfig, from_dict
from .errors import InputError, first_line
from .model import Manifold
from .runfolder import RunFolder, temporary


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))     # a full disk or quota


class DiskFull(InputError):
    """A checkpoint did not fit on its disk (`need` bytes, `free` there); the previous one is untouched."""

    def __init__(self, path: Path, need: int, free: int):
        super().__init__(f"{path}: the disk is full: the checkpoint needs {size_text(need)} and "
                         f"{size_text(free)} are free")
        self.need, self.free = need, free


def save_atomic(obj: dict, path: Path) -> None:
    """Write `obj` to PATH.tmp, then rename it over `path`: a failed or interrupted save never
    touches the previous file and leaves no temporary behind. DiskFull says how much room the
    file needs and how much there is; InputError for other reasons the file cannot be written
    (the caller says what to do)."""
    obj = _plain(obj)
    tmp = temporary(path)
    need = _nbytes(obj) + (1 << 20)                     # tensors, plus room for the archive's records
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)                     # a killed save's: its space counts below
        if shutil.disk_usage(path.parent).free < need:  # do not fill the disk other writers need
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())                        # on the disk before it replaces the last good one
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(e, Exception):
            raise                                       # KeyboardInterrupt, SystemExit: after the clean-up
        os_error, free = _os_error(e), _free_bytes(path.parent)
        if (os_error is not None and os_error.errno in _NO_SPACE) or (free is not None and free < need):
            raise DiskFull(path, need, free or 0) from None
        if os_error is not None:
            raise InputError(f"{path}: cannot write the checkpoint ({os_error.strerror or os_error})") from None
        raise


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in `obj`."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def _os_error(e: BaseException | None) -> OSError | None:
    """`e`, or the error it was raised from, that is an OSError (torch's archive writer turns the
    OSError of a write into a RuntimeError)."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def size_text(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


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
        raise InputError(f"{run.latest}: unreadable checkpoint ({first_line(e)}); delete it and train again.") from None
    except Exception as e:  # a truncated file can only come from outside tampering (saves are atomic)
        raise InputError(f"{run.latest}: unreadable checkpoint ({first_line(e)}); delete it and train again.") from None


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
    aabb, cfg, state = ckpt["aabb"], model_config(ckpt), model_state(ckpt)
    _check_shapes(run, cfg, aabb, ckpt["n_views"], state)
    model = Manifold(cfg, aabb[0], aabb[1], ckpt["n_views"], grid_backend).to(device)
    model.load_state_dict(state)
    model.eval()
    return model, ckpt


def _check_shapes(run: RunFolder, cfg: ModelConfig, aabb, n_views: int, state: dict) -> None:
    """The model the checkpoint's settings describe, built on the meta device (no memory), must
    have the shapes of the checkpoint's own tensors: settings edited after training (a table of
    2^40 entries) would otherwise allocate whatever they say before anything is compared."""
    fix = "the checkpoint was changed after training; delete it and train again."
    try:
        with torch.device("meta"):
            meta = Manifold(cfg, aabb[0], aabb[1], int(n_views), "torch")
    except Exception as e:                  # settings no model can have (a negative size, ...)
        raise InputError(f"{run.latest}: its model settings describe no model ({first_line(e)}); {fix}") from None
    for name, t in meta.named_parameters():
        have = state.get(name)
        if have is None or tuple(have.shape) != tuple(t.shape):
            got = "missing" if have is None else f"{tuple(have.shape)}"
            raise InputError(f"{run.latest}: its settings need {name} of shape {tuple(t.shape)}, the file holds "
                             f"{got}; {fix}")
