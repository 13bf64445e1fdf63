"""Run folder layout and atomic file helpers (one place for paths)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda s: s.root / "config.json")        # scene, split, cache settings
    cache = property(lambda s: s.root / "cache")
    train_config = property(lambda s: s.root / "train.json")
    latest = property(lambda s: s.root / "checkpoints" / "latest.pt")
    eval_json = property(lambda s: s.root / "eval.json")
    eval_dir = property(lambda s: s.root / "eval")
    log = property(lambda s: s.root / "log.jsonl")                 # a copy of the commands' events
    renders = property(lambda s: s.root / "renders")           # the Blender add-on's default render output

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold RUN/.lock while `what` (cache, train) writes the folder, so a second process on the
        same folder stops with a clear error instead of interleaving files. The OS drops the lock
        when the process ends, so a crash or kill leaves nothing stale behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        f = open(self.root / ".lock", "a+")
        try:
            _lock(f)
        except OSError:
            f.close()
            raise InputError(f"{self.root}: another process is already writing this run folder; wait for it "
                             f"to finish (or stop it) before starting {what}, or use another --run folder.") from None
        try:
            yield
        finally:
            f.close()      # closing releases the lock

    def read_config(self) -> dict:
        if not self.config.is_file() or not (self.cache / "meta.json").is_file():
            raise InputError(f"{self.root}: no complete ray cache in this run folder; run "
                             f"'backend cache --scene SCENE --run {self.root}' first.")
        return read_json(self.config)


def make_dir(path: str | Path, what: str) -> Path:
    """Create the folder `path` (and its parents) for `what` ("--out"); InputError naming it when
    that is impossible (a file in the way, no permission, a read-only disk)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path}: cannot create the {what} folder ({e.strerror or e}); choose another "
                         "folder.") from None
    return path


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


def _lock(f) -> None:
    """Non-blocking exclusive lock on an open file; OSError when another process holds it."""
    try:
        import fcntl
    except ImportError:        # Windows
        import msvcrt
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
