"""Run folder layout and atomic file helpers (one place for paths)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import InputError


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda s: s.root / "config.json")        # scene, split, cache settings
    cache = property(lambda s: s.root / "cache")
    train_config = property(lambda s: s.root / "train.json")
    checkpoints = property(lambda s: s.root / "checkpoints")
    latest = property(lambda s: s.root / "checkpoints" / "latest.pt")
    eval_json = property(lambda s: s.root / "eval.json")
    eval_dir = property(lambda s: s.root / "eval")
    log = property(lambda s: s.root / "log.jsonl")

    def read_config(self) -> dict:
        if not self.config.is_file() or not (self.cache / "meta.json").is_file():
            raise InputError(f"{self.root}: no complete ray cache in this run folder; run "
                             f"'backend cache --scene SCENE --run {self.root}' first.")
        return read_json(self.config)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e}); delete it and run the step that writes it again.") from None


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)
