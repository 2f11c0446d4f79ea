"""The synthetic-shapes demo: images drawn from a seed, and the small Mask R-CNN trained on them that ships here.

Modules:
    shapes.py     seeded images of circles, squares and triangles with their masks; the shipped model's path
    data/         shapes_maskrcnn.npz, trained by examples/train_shapes.py (8 MB, float16)
"""
