"""Run folder layout, the run's settings, and atomic file helpers (one place for paths)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from .errors import InputError


@dataclass(frozen=True)
class RunSettings:
    """RUN/config.json: what the ray cache was built from and with (backend/cache.py writes it).
    Every reader takes it from RunFolder.settings(), so the fallback of a setting that a file
    lacks (an older or a hand-written one) is defined here once."""
    mesh: str
    views: list[dict]                   # per photo: name, image, camera (Camera.to_dict), split
    ss: int = 1                         # sub-samples per pixel side: the cache's, so the model's
    aabb: list | None = None            # [min xyz, max xyz] of the mesh
    scene: str | None = None
    level: int | None = None            # images_k/, cams_k/ of the scene
    test_every: int = 0
    train_views: list[int] = field(default_factory=list)
    test_views: list[int] = field(default_factory=list)

    @property
    def view_names(self) -> list[str]:
        return [v["name"] for v in self.views]


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
    lock = property(lambda s: s.root / ".lock")

    @contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        """Hold RUN/.lock while `what` (cache, train) writes the folder, so a second process on the
        same folder stops with a clear error instead of interleaving files. The OS drops the lock
        when the process ends, so a crash or kill leaves nothing stale behind."""
        from filelock import FileLock, Timeout      # not at the top: the add-on loads this module too
        lock = FileLock(str(self.lock), timeout=0)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            raise InputError(f"{self.root}: another process is already writing this run folder; wait for it "
                             f"to finish (or stop it) before starting {what}, or use another --run folder.") from None
        except OSError as e:
            raise InputError(f"{self.root}: cannot write this run folder ({e.strerror or e}); make it writable "
                             "or use another --run folder.") from None
        try:
            yield
        finally:
            lock.release()

    def settings(self, need_cache: bool = True) -> RunSettings:
        """The run's settings; InputError unless the ray cache is complete (`need_cache`: training,
        evaluation, camera paths) or, for the render server, at least RUN/config.json is there."""
        if need_cache and not (self.config.is_file() and (self.cache / "meta.json").is_file()):
            raise InputError(f"{self.root}: no complete ray cache in this run folder; run "
                             f"'backend cache --scene SCENE --run {self.root}' first.")
        if not self.config.is_file():
            raise InputError(f"{self.root}: not a run folder (no config.json); train a model first.")
        d = read_json(self.config)
        known = {f.name for f in fields(RunSettings)}
        try:
            return RunSettings(**{k: v for k, v in d.items() if k in known})
        except (AttributeError, TypeError):       # not an object, or without mesh and views
            raise InputError(f"{self.config}: not a run's settings (it needs at least 'mesh' and 'views'); "
                             "build the ray cache again.") from None


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
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e}); delete it and run the step that writes it again.") from None


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)
