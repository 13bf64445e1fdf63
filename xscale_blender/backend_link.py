"""Where the backend package lives.

In the built extension, backend/ sits inside the extension folder next to this file; in a
source checkout it sits at the repository root next to xscale_blender/. Only its numpy-only
modules (cameras, scene, campath) are imported here; training runs as `python -m backend`
in another interpreter with `pythonpath()` on PYTHONPATH.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

try:
    from . import backend  # packaged extension
except ImportError:
    _root = str(Path(__file__).resolve().parent.parent)
    if _root not in sys.path:  # source checkout only; the packaged extension never edits sys.path
        sys.path.insert(0, _root)
    import backend  # type: ignore[no-redef]

# numpy-only modules (importing them never pulls in torch)
cameras = importlib.import_module(backend.__name__ + ".cameras")
campath = importlib.import_module(backend.__name__ + ".campath")
scene = importlib.import_module(backend.__name__ + ".scene")
errors = importlib.import_module(backend.__name__ + ".errors")


def pythonpath() -> str:
    """The folder that contains backend/, for PYTHONPATH of the backend process."""
    return str(Path(backend.__file__).resolve().parent.parent)
