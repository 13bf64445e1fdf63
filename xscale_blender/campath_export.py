"""Camera path export: the scene camera, frame by frame, as OpenCV K + world-to-camera."""
from __future__ import annotations

from typing import Iterable, Optional

import bpy
import numpy as np

from .backend_link import cameras, campath
from .core import camera_convert as cc


def blender_camera(scene: bpy.types.Scene, cam_obj: bpy.types.Object,
                   depsgraph: Optional[bpy.types.Depsgraph] = None) -> cc.BlenderCamera:
    """The evaluated settings of a camera object for the scene's render resolution."""
    if cam_obj is None or cam_obj.type != "CAMERA":
        raise ValueError("the scene has no active camera")
    ob = cam_obj.evaluated_get(depsgraph) if depsgraph is not None else cam_obj
    data = ob.data
    if data.type != "PERSP":
        raise ValueError(f"camera '{cam_obj.name}' is {data.type.lower()}; only perspective "
                         "cameras can be rendered")
    r = scene.render
    w, h = cc.render_size(r.resolution_x, r.resolution_y, r.resolution_percentage)
    return cc.BlenderCamera(
        lens=data.lens, shift_x=data.shift_x, shift_y=data.shift_y,
        resolution_x=w, resolution_y=h,
        pixel_aspect_x=r.pixel_aspect_x, pixel_aspect_y=r.pixel_aspect_y,
        sensor_width=data.sensor_width, sensor_height=data.sensor_height,
        sensor_fit=data.sensor_fit, matrix_world=np.array(ob.matrix_world, dtype=np.float64))


def opencv_camera(scene: bpy.types.Scene, cam_obj: bpy.types.Object,
                  depsgraph: Optional[bpy.types.Depsgraph] = None, name: str = ""):
    """backend.cameras.Camera of a Blender camera at the current frame."""
    bc = blender_camera(scene, cam_obj, depsgraph)
    K, E = cc.blender_to_opencv(bc)
    return cameras.Camera(bc.resolution_x, bc.resolution_y, K, E, name)


def path_frames(scene: bpy.types.Scene) -> list[int]:
    return list(range(scene.frame_start, scene.frame_end + 1, max(scene.frame_step, 1)))


def collect_camera_path(context: bpy.types.Context, frames: Iterable[int],
                        camera: Optional[bpy.types.Object] = None) -> tuple[list[int], list]:
    """Evaluate the camera at every frame (animation, constraints, parents, drivers and
    camera markers all apply, as in a render); without `camera`, the scene camera of each frame.
    The current frame is restored afterwards."""
    scene = context.scene
    keep = (scene.frame_current, scene.frame_subframe)
    numbers, cams = [], []
    try:
        for f in frames:
            scene.frame_set(f)
            cam_obj = camera or scene.camera
            depsgraph = context.evaluated_depsgraph_get()
            numbers.append(int(f))
            cams.append(opencv_camera(scene, cam_obj, depsgraph, name=f"frame_{f:06d}"))
    finally:
        scene.frame_set(keep[0], subframe=keep[1])
    return numbers, cams


def export_camera_path(context: bpy.types.Context, filepath: str, frames: Optional[Iterable[int]] = None,
                       camera: Optional[bpy.types.Object] = None) -> list[int]:
    """Write the camera path JSON read by `backend render`; returns the frame numbers."""
    scene = context.scene
    frames = path_frames(scene) if frames is None else list(frames)
    if not frames:
        raise ValueError("the frame range is empty")
    numbers, cams = collect_camera_path(context, frames, camera)
    fps = scene.render.fps / scene.render.fps_base
    campath.write_camera_path(filepath, numbers, cams, fps)
    return numbers
