"""MVSNet scene import: the mesh and one exact camera per photo, in the scene's world frame."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import bpy
import numpy as np
from mathutils import Matrix

from . import view_transform
from .backend_link import config, errors, scene as scene_io
from .core import camera_convert as cc

# Custom properties on imported camera objects (read back by apply_camera_settings).
P_VIEW = "xscale_view"
P_IMAGE = "xscale_image"
P_SPLIT = "xscale_split"            # "train" | "test" (held out for evaluation)
P_RESOLUTION = "xscale_resolution"  # [width, height]
P_PIXEL_ASPECT = "xscale_pixel_aspect"
P_K = "xscale_K"                    # row-major 3x3, as in the cam file
P_W2C = "xscale_world_to_camera"    # row-major 4x4, as in the cam file

InputError = errors.InputError


def import_mesh(context: bpy.types.Context, path: Path, collection: bpy.types.Collection) -> list:
    """Import OBJ/PLY without any axis conversion (Blender's defaults rotate by 90 degrees)."""
    before = set(bpy.data.objects)
    ext = path.suffix.lower()
    with _active_collection(context, collection):
        if ext == ".obj":
            bpy.ops.wm.obj_import(filepath=str(path), forward_axis="Y", up_axis="Z")
        elif ext == ".ply":
            bpy.ops.wm.ply_import(filepath=str(path), forward_axis="Y", up_axis="Z")
        else:
            raise InputError(f"{path}: unsupported mesh format; use OBJ or PLY.")
    new = [ob for ob in bpy.data.objects if ob not in before]
    for ob in new:   # importers link to the active collection; make sure that is ours
        if collection not in ob.users_collection:
            collection.objects.link(ob)
        for c in list(ob.users_collection):
            if c is not collection:
                c.objects.unlink(ob)
    return new


class _active_collection:
    """Temporarily make `collection` the view layer's active collection."""

    def __init__(self, context: bpy.types.Context, collection: bpy.types.Collection):
        self.view_layer = context.view_layer
        self.target = _find_layer_collection(self.view_layer.layer_collection, collection)
        self.saved = self.view_layer.active_layer_collection

    def __enter__(self):
        if self.target is not None:
            self.view_layer.active_layer_collection = self.target

    def __exit__(self, *exc):
        self.view_layer.active_layer_collection = self.saved


def _find_layer_collection(lc, collection):
    if lc.collection == collection:
        return lc
    for child in lc.children:
        found = _find_layer_collection(child, collection)
        if found is not None:
            return found
    return None


def make_camera(name: str, K: np.ndarray, world_to_camera: np.ndarray, width: int, height: int,
                collection: bpy.types.Collection) -> bpy.types.Object:
    """A Blender camera that projects exactly like the OpenCV camera (K, world_to_camera)."""
    bc = cc.opencv_to_blender(K, world_to_camera, width, height)
    data = bpy.data.cameras.new(name)
    data.type = "PERSP"
    data.sensor_fit = bc.sensor_fit
    data.sensor_width = bc.sensor_width
    data.sensor_height = bc.sensor_height
    data.lens = bc.lens
    data.shift_x, data.shift_y = bc.shift_x, bc.shift_y
    ob = bpy.data.objects.new(name, data)
    ob.matrix_world = Matrix(bc.matrix_world.tolist())   # rows, as numpy
    ob[P_RESOLUTION] = [int(width), int(height)]
    ob[P_PIXEL_ASPECT] = [bc.pixel_aspect_x, bc.pixel_aspect_y]
    ob[P_K] = [float(v) for v in np.asarray(K, dtype=np.float64).ravel()]
    ob[P_W2C] = [float(v) for v in np.asarray(world_to_camera, dtype=np.float64).ravel()]
    collection.objects.link(ob)
    return ob


def apply_camera_settings(scene: bpy.types.Scene, cam_obj: Optional[bpy.types.Object]) -> bool:
    """Set the scene's resolution and pixel aspect to those stored on an imported camera.

    Resolution is a scene setting in Blender, so it is stored per camera and applied whenever
    that camera becomes the active one. Returns whether anything changed.
    """
    if cam_obj is None or P_RESOLUTION not in cam_obj:
        return False
    w, h = (int(v) for v in cam_obj[P_RESOLUTION])
    pax, pay = (float(v) for v in cam_obj.get(P_PIXEL_ASPECT, (1.0, 1.0)))
    r = scene.render
    if (r.resolution_x, r.resolution_y) == (w, h) and \
            abs(r.pixel_aspect_x - pax) < 1e-9 and abs(r.pixel_aspect_y - pay) < 1e-9:
        return False
    r.resolution_x, r.resolution_y = w, h
    r.pixel_aspect_x, r.pixel_aspect_y = pax, pay
    return True


def _set_background(data: bpy.types.Camera, image_path: Path) -> None:
    img = bpy.data.images.load(str(image_path), check_existing=True)  # pixels load lazily
    data.show_background_images = True
    bg = data.background_images.new()
    bg.image = img
    bg.frame_method = "STRETCH"   # the photo spans exactly the camera frame (shift included)
    bg.display_depth = "BACK"


def _child_collection(parent: bpy.types.Collection, name: str, color: str) -> bpy.types.Collection:
    coll = bpy.data.collections.new(name)
    parent.children.link(coll)
    coll.color_tag = color
    return coll


def import_scene(context: bpy.types.Context, scene_dir: str, *, mesh: bool = True,
                 photos: bool = True, test_every: int = config.TEST_EVERY.default,
                 level: Optional[int] = None, set_active: bool = True) -> bpy.types.Collection:
    """Import an MVSNet scene folder; raises InputError with a user-facing message."""
    root = Path(bpy.path.abspath(scene_dir)).resolve()
    sc = scene_io.load_scene(root, level=level)
    train_idx, test_idx = sc.split(test_every)
    held_out = set(test_idx)

    bscene = context.scene
    top = bpy.data.collections.new(f"XScale {root.name}")
    bscene.collection.children.link(top)
    cams_coll = _child_collection(top, f"{root.name} cameras", "COLOR_05")
    test_coll = _child_collection(top, f"{root.name} held-out", "COLOR_01") if held_out else None

    if mesh:
        import_mesh(context, sc.mesh_path, top)

    centers = np.array([v.camera.center for v in sc.views])
    extent = float(np.linalg.norm(centers.max(0) - centers.min(0))) if len(centers) > 1 else 1.0
    first_train = None
    for i, view in enumerate(sc.views):
        cam = view.camera
        is_test = i in held_out
        ob = make_camera(view.name, cam.K, cam.world_to_camera, cam.width, cam.height,
                         test_coll if is_test else cams_coll)
        ob[P_VIEW] = view.name
        ob[P_IMAGE] = str(view.image_path)
        ob[P_SPLIT] = "test" if is_test else "train"
        ob.data.display_size = max(extent * 0.03, 1e-3)
        if cam.depth_range and cam.depth_range[0] > 0 and cam.depth_range[1] > cam.depth_range[0]:
            ob.data.clip_start = cam.depth_range[0] * 0.5
            ob.data.clip_end = cam.depth_range[1] * 2.0
        if photos:
            _set_background(ob.data, view.image_path)
        if first_train is None and not is_test:
            first_train = ob

    s = bscene.xscale
    s.scene_dir = str(root)
    s.test_every = test_every
    if level is not None:
        s.level = level
    if not s.run_dir:
        s.run_dir = str(root.parent / f"{root.name}_xscale_run")
    if set_active and first_train is not None:
        bscene.camera = first_train
        apply_camera_settings(bscene, first_train)
    view_transform.use_standard(bscene)        # the photos' colours (view_transform.py)
    return top


# --- keep the scene resolution in step with the active camera ------------------------------

_last_camera: dict[str, str] = {}


@bpy.app.handlers.persistent
def _on_update(scene: bpy.types.Scene, *_args) -> None:
    cam = scene.camera
    key = scene.name_full
    name = cam.name_full if cam is not None else ""
    previous = _last_camera.get(key)
    _last_camera[key] = name
    # Only a change applies: opening a file must not undo a resolution the user set.
    if previous is not None and previous != name:
        apply_camera_settings(scene, cam)


@bpy.app.handlers.persistent
def _on_load(*_args) -> None:
    _last_camera.clear()   # scene names of the previous file mean nothing in the new one


HANDLERS = ((bpy.app.handlers.depsgraph_update_post, _on_update),
            (bpy.app.handlers.frame_change_post, _on_update),
            (bpy.app.handlers.load_post, _on_load))


def register() -> None:
    for handlers, fn in HANDLERS:
        if fn not in handlers:
            handlers.append(fn)


def unregister() -> None:
    for handlers, fn in HANDLERS:
        while fn in handlers:
            handlers.remove(fn)
    _last_camera.clear()

