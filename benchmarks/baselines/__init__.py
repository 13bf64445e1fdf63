"""Baselines for the quality benchmark (benchmarks/bench_quality.py).

- vertex_colour: one RGB per mesh vertex, interpolated across triangles (the "featurization
  limited by mesh resolution" baseline), fitted with the same L1 loss as the hash manifold.
- gsplat_baseline: 3D Gaussian splatting through the `gsplat` package (CUDA only),
  initialised from the mesh vertices, trained with gsplat's standard recipe.
"""
