"""What the scripts of tests/real share: the installed add-on's modules, and a log that goes both to a
file and to the console. The scripts run inside a real Blender (`blender --python tests/real/X.py`)
and put this folder on sys.path to import this."""
import importlib
import os


def addon(name: str):
    """The add-on's module `name` ('engine', 'core.jobs'): the installed extension, else the source tree."""
    for prefix in ("bl_ext.user_default.xscale_nvs", "xscale_blender"):
        try:
            return importlib.import_module(f"{prefix}.{name}")
        except ImportError:
            continue
    raise ImportError(f"the XScale-NVS add-on is not enabled ({name})")


def logger(out_dir: str, name: str, prefix: str):
    """say(*parts): a line in OUT/NAME and on the console (after `prefix:`)."""
    os.makedirs(out_dir, exist_ok=True)
    log = open(os.path.join(out_dir, name), "w")

    def say(*parts) -> None:
        print(*parts, file=log, flush=True)
        print(f"{prefix}:", *parts, flush=True)
    return say
