"""The picture files of one segmented image, as `minimaskrcnn segment` writes them: the one function both the
single-process loop (`cli.segment`) and a Dask worker (`distributed.tasks`, which renders into a scratch folder and
sends the files' bytes back) call, so that the two runs write the same bytes.

Shape glossary
    H, W: image height and width

Files, for an image whose output stem is STEM: STEM_overlay.png (always), STEM_<k>_<label>.png (cut-outs),
STEM_semantic.png and STEM_semantic_color.png (semantic), STEM_instances.png (instances).

`frame_output` is the same for one frame of `minimaskrcnn video`: its overlay and COCO results entries.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from minimaskrcnn.io.coco import coco_results
from minimaskrcnn.io.files import write_png
from minimaskrcnn.render import cutouts, labelmaps, overlay

__all__ = ["Pictures", "write_image_outputs", "FrameOutput", "frame_output"]


@dataclass(frozen=True)
class Pictures:
    """Which pictures to write besides the overlay, and the mask threshold they binarize with."""
    mask_threshold: float = 0.5
    cutouts: bool = False
    semantic: bool = False
    instances: bool = False


def write_image_outputs(outdir, stem: str, image, det, pictures: Pictures, protected=frozenset()) -> list:
    """Write the pictures of one image (`image` the (H, W, 3) array `det` was computed on); returns the paths written,
    in the order written."""
    t = pictures.mask_threshold
    written = []

    def png(array, kind: str) -> None:
        path = os.path.join(outdir, f"{stem}_{kind}.png")
        write_png(array, path, protected)
        written.append(path)

    png(overlay.render_overlay(image, det, t), "overlay")
    if pictures.cutouts:
        written.extend(cutouts.write_cutouts(outdir, stem, image, det, t, protected))
    if pictures.semantic:
        sem = labelmaps.semantic_map(det, t)                         # (H, W)
        png(sem, "semantic")
        png(labelmaps.colorize(sem, len(det.class_names)), "semantic_color")
    if pictures.instances:
        png(labelmaps.instance_map(det, t), "instances")
    return written


@dataclass
class FrameOutput:
    """What a video writer needs of one processed frame."""
    index: int                 # the frame's position in the input video
    overlay: np.ndarray        # (H, W, 3) uint8
    entries: list              # COCO results entries (image_id = frame index, no file_name), in rank order
    label_names: list          # class name of each detection
    class_names: tuple
    seconds: float = 0.0       # detecting


def frame_output(index: int, image, det, mask_threshold: float, seconds: float = 0.0,
                 entries: bool = True) -> FrameOutput:
    """The overlay and (with `entries`) the COCO results entries of one video frame (`image` the (H, W, 3) frame
    `det` is of)."""
    return FrameOutput(index, overlay.render_overlay(image, det, mask_threshold),
                       coco_results(det, image_id=index, mask_threshold=mask_threshold) if entries else [],
                       det.label_names, tuple(det.class_names), seconds)
