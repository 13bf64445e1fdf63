"""Synthetic scenes with exact ground truth, for the tests, the demo and the benchmarks (numpy only;
the pipeline never imports this package, only the demo command does).

    procedural.py   the procedural world (shapes, analytic texture, shading, its exact render), its
                    cameras and flythrough, and the clean MVSNet scene folder (`make_scene`)
    capture.py      the same world photographed like a real capture (`make_capture`), with its
                    ground truth (`load_truth`)
"""
