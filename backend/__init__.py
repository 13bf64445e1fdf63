"""XScale-NVS backend: scene -> ray cache -> hash featurized manifold -> renders.

Importing this package (and its numpy-only modules: cameras, meshio, scene,
raster_cpu, campath, colour, events, errors) never imports torch, so the
Blender side can reuse the format code.
"""
__version__ = "0.1.0"
