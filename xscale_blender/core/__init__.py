"""The add-on's bpy-free half: logic that runs and is tested without Blender (standard library,
numpy, and the backend's torch-free modules through backend_link). The modules one level up
(operators, panels, the render engine) are the Blender glue on top of it; nothing here imports
bpy.

jobs: backend processes and their progress events. backend_setup: the Set Up Backend script
(run by Blender's Python, standard library only). camera_convert: OpenCV cameras <-> Blender
camera settings. render_server: the render server's client; preview: the viewport's rendering
thread on top of it. ui_text: text fitted to a region's width. deps: what Blender's own Python
lacks (numpy) and how to install it.
"""

# The render engine's bl_idname (engine.py registers it): a plain name here, so modules that only
# compare a scene's engine with it (view_transform) need not import the engine and its panels.
ENGINE_ID = "XSCALE_NVS"
