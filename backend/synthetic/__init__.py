"""Synthetic scenes with exact ground truth, for the tests, the demo and the benchmarks (numpy, and
Pillow for JPEG; no torch). The pipeline never imports this package; only the demo command does.

    procedural.py        the procedural world (shapes, analytic texture, shading, its exact render),
                         its cameras and flythrough, and the clean MVSNet scene folder (`make_scene`)
    capture.py           the same world photographed like a real capture, with its ground truth
                         (`make_capture`; its docstring says what is degraded and how)
    capture_settings.py  the capture's variants, degradation parameters (`CaptureParams`) and the
                         settings its views.json stores
    capture_photos.py    one photo: occluder, clean render, sensor and JPEG, written camera
    sensor.py            a photo's exposure, white balance, sensor noise and JPEG encoding
    pose_noise.py        the written cameras' pose error (a requested reprojection error in pixels)
    occluders.py         a pole or a box in front of one photo's camera
    mesh_degradation.py  the photogrammetry-like mesh: simplified, displaced, holed, with blobs
    geometry.py          point-to-mesh distances, blocked segments, random surface points
    clean_render.py      the exact render of the true scene, culled to the camera's frustum
    magnified.py         the magnified views: points, cameras 1x..8x closer, renders, resampled photo
    truth.py             the ground-truth files: writing and reading them (`load_truth`)
"""
