"""Run folder layout, the run's settings, which scene a run folder belongs to, its lock, and atomic
file helpers (one place for paths)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager, suppress
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
    inputs: str | None = None           # cache.inputs_fingerprint of the scene it was built from

    @property
    def view_names(self) -> list[str]:
        return [v["name"] for v in self.views]


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._known_run = False

    marker = property(lambda s: s.root / "run.json")            # the scene the folder belongs to
    config = property(lambda s: s.root / "config.json")        # scene, split, cache settings
    cache = property(lambda s: s.root / "cache")
    cache_tmp = property(lambda s: s.root / "cache.tmp")        # a ray cache being built
    cache_progress = property(lambda s: s.root / "cache.tmp" / "progress.json")
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
        when the process ends, so a crash or kill leaves nothing stale behind; the temporary files
        of a writer that was killed are deleted once the lock is held."""
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
            for path in (self.latest, self.marker, self.config, self.train_config):
                temporary(path).unlink(missing_ok=True)     # only writers holding the lock make these
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

    # --- which scene the folder belongs to -------------------------------------------------------

    def is_run(self) -> bool:
        """A run folder, or an empty one that may become one: the backend may write here (for the
        copy of the events: asked often, so a yes is kept)."""
        if not self._known_run:
            self._known_run = self.owner() is not None or (self.root.is_dir() and not self._foreign())
        return self._known_run

    def _foreign(self) -> list[str]:
        """The names in the folder that the backend did not write (for a folder without an owner)."""
        return sorted(p.name for p in self.root.iterdir()
                      if p.name != self.lock.name and not (p == self.log and _is_event_log(p)))

    def owner(self) -> str | None:
        """The scene folder this run folder belongs to: RUN/run.json's, or for a folder from before
        that file, its ray cache's (complete or interrupted); "" for a run folder of an unknown
        scene (a hand-written config.json); None when nothing here shows that the backend wrote it."""
        sources = ((self.marker, ("scene",)), (self.config, ("scene",)), (self.cache_progress, ("key", "scene")))
        for path, keys in sources:
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if path == self.config and not (isinstance(d, dict) and {"mesh", "views"} <= set(d)):
                continue                                    # someone else's config.json
            for k in keys:
                d = d.get(k) if isinstance(d, dict) else None
            if isinstance(d, str):
                return d
            if path == self.config:
                return ""
        return None

    def claim(self, scene: str, cache_config: dict, overwrite: bool, write: bool = True) -> None:
        """Before the ray cache of `scene` is built here (RUN/config.json to be `cache_config`):
        InputError for a folder the backend did not write (its files are never deleted), a run of
        another scene, and a trained run whose cache would change, unless `overwrite` (start over:
        the model and the cache's settings go). With `write`, then record the scene (RUN/run.json)."""
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"{self.root}: a file, not a folder; give --run a folder.")
        owner = self.owner()
        if owner is None and self.root.is_dir():
            foreign = self._foreign()
            if foreign:
                shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
                raise InputError(f"{self.root}: not a run folder (it holds {shown}, which the backend did not "
                                 "write, and a ray cache would replace its cache folders); give --run a new or "
                                 "empty folder.")
        if owner and not same_path(owner, scene) and not overwrite:
            raise self.other_scene(owner, scene, "or --overwrite to start this one over with it (its ray cache "
                                   "and trained model are replaced)")
        same_cache = _json_or_none(self.config) == json.loads(json.dumps(cache_config))    # as the file has it
        if self.latest.is_file() and not overwrite and not same_cache:
            raise InputError(f"{self.root}: this run folder holds a model trained on its ray cache ({self.latest}); "
                             "a cache built with other settings would no longer match it. Keep the settings it was "
                             "built with, use another --run folder, or --overwrite to start over (deletes the model).")
        if write:
            if overwrite:
                self.latest.unlink(missing_ok=True)
                self.config.unlink(missing_ok=True)        # the old cache is no longer this run's
            write_json(self.marker, {"scene": scene})

    def other_scene(self, owner: str, scene: str, fix: str) -> InputError:
        """The error for a run folder used with a scene it does not belong to; `fix`: the other way out."""
        return InputError(f"{self.root}: this run folder belongs to the scene {owner}, not {scene}; use another "
                          f"--run folder for {scene}, {fix}.")


def same_path(a: str | Path, b: str | Path) -> bool:
    """The same folder (a symbolic link or, on Windows, other letter case included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:                   # one of them is gone: compare the names
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


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


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_event_log(path: Path) -> bool:
    """Every line of `path` is an event (a line a killed writer left unfinished aside): a log the
    backend wrote."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, ValueError):
        return False
    try:
        return all(isinstance(d := json.loads(x), dict) and "event" in d for x in lines[:-1])
    except ValueError:
        return False


def temporary(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (an atomic replace)."""
    return path.with_name(path.name + ".tmp")


def write_json(path: str | Path, data: Any) -> None:
    """Replace `path` atomically; InputError naming it when it cannot be written (a read-only
    folder, a full disk)."""
    path = Path(path)
    tmp = temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write ({e.strerror or e}); free some space on its disk or make "
                         "its folder writable, then run again.") from None
