"""Pictures made from detections (arrays in, arrays out; writing them is `io.files`).

Modules, in reading order:
    draw.py        the drawing primitives: instance colours, colour maps, fonts, labels, mask edges, panels, grids
    overlay.py     the overlay of one image: tinted masks, contours, boxes, "label score"
    labelmaps.py   semantic (class id per pixel) and instance (rank per pixel) maps, colour preview
    cutouts.py     each object cropped to its box with its mask as alpha, and their file names
    outputs.py     the picture files of one segmented image, the one writer of `segment` and of a Dask worker
"""
