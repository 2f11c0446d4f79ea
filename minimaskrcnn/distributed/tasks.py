"""What runs on a Dask worker: one image (or one chunk of video frames) in, its compact results out.

Shape glossary
    N: number of detections of one image (in rank order: descending score)
    H, W: image height and width

The client sends the image file's bytes (so the workers need no access to the client's files) and gets back
`ImageResult`: boxes, labels, scores, the masks as COCO RLE (binarized at the run's mask threshold) inside the COCO
results entries, and, when the run writes pictures, the PNG files' bytes. The dense (N, H, W) float32 masks never
travel: 100 masks of a 480x640 photo are 123 MB as float32, their RLE a few kB.

A video travels as chunks of decoded frames (`segment_frames`), the overlays coming back as (H, W, 3) uint8 arrays
with each frame's entries; the client reassembles them in order and encodes the video.

The pictures are rendered here, by the same function the single-process loop calls (`render.outputs`), into a
scratch folder whose files are read back: the bytes are those a single-process run writes, and the client only
writes bytes, so it does not become the bottleneck of a large cluster. Re-rendering on the client from the RLE would
also give identical pixels (every picture depends on the masks only through `masks >= threshold`, which the RLE holds
exactly) but would make the client's one core do that work for every worker: with every picture of the demo model's
detections it cost the client 0.5 s per photo (benchmarks/bench_distributed.py, README "Clusters"), against 0.69 MB
of PNG bytes per photo to receive and write.
"""
from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from minimaskrcnn.distributed import cache

__all__ = ["RunSpec", "ImageJob", "ImageResult", "WorkerInfo", "worker_version", "probe", "segment_image",
           "segment_frames"]


@dataclass(frozen=True)
class RunSpec:
    """What every task of a run shares. `pictures` (a `render.outputs.Pictures`) or None for no pictures."""
    weights: str
    score_threshold: float = 0.5
    mask_threshold: float = 0.5
    keep: Optional[tuple] = None          # label indices to keep, None: all
    pictures: object = None
    load: Optional[dict] = None           # keyword arguments of minimaskrcnn.load (matterport config=, class_names=)
    entries: bool = True                  # video frames: compute the COCO results entries (for --jsonl)


@dataclass
class ImageJob:
    index: int                            # position in the run's inputs
    path: str                             # as the user named it: for messages and the results' file_name
    data: bytes                           # the file's bytes
    image_id: int
    stem: str                             # output name stem


@dataclass
class ImageResult:
    """One image's results. `error` is the one-line reason when the image failed (the other fields are then empty)."""
    index: int
    path: str
    error: Optional[str] = None
    entries: list = field(default_factory=list)      # COCO results entries in rank order (RLE in "segmentation")
    label_names: list = field(default_factory=list)  # (N,) in rank order
    boxes: Optional[np.ndarray] = None                # (N, 4) float32 as x1, y1, x2, y2 in image pixels
    labels: Optional[np.ndarray] = None               # (N,) int64
    scores: Optional[np.ndarray] = None               # (N,) float32
    image_size: tuple = (0, 0)                        # (H, W)
    class_names: tuple = ()
    has_masks: bool = True                            # the model predicts masks (Mask R-CNN, not Faster R-CNN)
    files: dict = field(default_factory=dict)         # file name -> PNG bytes, in the order written
    seconds: float = 0.0                              # reading and detecting, as the single-process run counts
    worker: str = ""

    def detections(self):
        """A `Detections` with the masks decoded from the RLE as float32 0/1 (binarized at the run's threshold);
        None for a failed image."""
        if self.error is not None:
            return None
        from minimaskrcnn.detections import Detections
        from minimaskrcnn.io.coco import decode
        h, w = self.image_size
        masks = None
        if self.has_masks:
            masks = np.zeros((len(self.entries), h, w), np.float32)  # (N, H, W)
            for k, e in enumerate(self.entries):
                masks[k] = decode(e["segmentation"])
        return Detections(self.boxes, self.labels, self.scores, masks, tuple(self.class_names), (h, w))


@dataclass
class WorkerInfo:
    """What `probe` finds on a worker."""
    version: str
    class_names: tuple


def worker_version() -> str:
    """This worker's minimaskrcnn version (importing this module at all is the first check)."""
    from minimaskrcnn._version import __version__
    return __version__


def probe(weights: str, load=None) -> WorkerInfo:
    """Load (and keep) the model on this worker: fails here, once, if the worker lacks the weights or minimaskrcnn."""
    from minimaskrcnn._version import __version__
    model = cache.get_model(weights, load)
    return WorkerInfo(__version__, tuple(model.class_names))


def segment_image(job: ImageJob, spec: RunSpec) -> ImageResult:
    """Read, detect and (with `spec.pictures`) render one image. Bad input (ValueError, OSError) comes back as
    `ImageResult.error`; anything else raises, and Dask retries the task."""
    from minimaskrcnn.image import read_image
    from minimaskrcnn.io.coco import coco_results
    from minimaskrcnn.detections import rank_order
    model = cache.get_model(spec.weights, spec.load)
    out = ImageResult(job.index, job.path, worker=_worker_address())
    try:
        t0 = time.perf_counter()
        source = io.BytesIO(job.data)
        source.name = job.path                                       # read_image names the file in its errors
        image = read_image(source)                                   # (H, W, 3)
        det = cache.predict(model, image, spec.score_threshold, spec.keep)
        out.seconds = time.perf_counter() - t0
        ranked = det.select(rank_order(det))                         # (N, ...) in rank order
        out.entries = coco_results(det, job.image_id, os.path.basename(job.path), spec.mask_threshold)
        out.label_names = ranked.label_names
        out.boxes, out.labels, out.scores = ranked.boxes, ranked.labels, ranked.scores
        out.image_size, out.class_names = tuple(det.image_size), tuple(det.class_names)
        out.has_masks = det.masks is not None
        if spec.pictures is not None:
            out.files = _render(job.stem, image, det, spec.pictures)
    except (ValueError, OSError) as e:                               # an unreadable image, as the single-process run
        return ImageResult(job.index, job.path, error=_one_line(e), worker=out.worker)
    return out


def segment_frames(frames: list, spec: RunSpec) -> list:
    """Detect and render a chunk of video frames, [(frame index, (H, W, 3) uint8)], into `render.outputs.FrameOutput`s
    in the same order. The overlay frames travel back as arrays: the client's video encoder needs the pixels."""
    from minimaskrcnn.render.outputs import frame_output
    model = cache.get_model(spec.weights, spec.load)
    out = []
    for index, image in frames:
        t0 = time.perf_counter()
        det = cache.predict(model, image, spec.score_threshold, spec.keep)
        out.append(frame_output(index, image, det, spec.mask_threshold, time.perf_counter() - t0, spec.entries))
    return out


def _render(stem: str, image, det, pictures) -> dict:
    """The picture files of one image as {file name: bytes}, rendered by `render.outputs` into a scratch folder."""
    from minimaskrcnn.render.outputs import write_image_outputs
    with tempfile.TemporaryDirectory(prefix="minimaskrcnn-") as scratch:
        paths = write_image_outputs(scratch, stem, image, det, pictures)
        files = {}
        for p in paths:
            with open(p, "rb") as f:
                files[os.path.basename(p)] = f.read()
    return files


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


def _worker_address() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return ""
