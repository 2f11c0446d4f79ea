"""Segmenting image collections on a Dask cluster (the optional extra `pip install "minimaskrcnn[distributed]"`).

    from distributed import Client
    import minimaskrcnn.distributed as mdist
    client = Client("tcp://scheduler:8786")              # or Client() for a local cluster, in a notebook
    for r in mdist.segment(client, ["a.jpg", "b.jpg"], "maskrcnn_resnet50_fpn_coco"):
        print(r.path, r.error or r.label_names)          # r.detections(): boxes, labels, scores, masks from RLE

Modules in reading order: `cache` (the model a worker process keeps, and its thread counts), `tasks` (what runs on
a worker), `client` (connecting, checking the workers, feeding them). `minimaskrcnn segment --scheduler ADDRESS` and
`--workers N` are this package driven by the command line. Nothing in the network imports it.
"""
from __future__ import annotations

from typing import Iterator, Optional

from minimaskrcnn.distributed.client import (DistributedError, absolute_weights, check_workers, connect,
                                             submit_images)
from minimaskrcnn.distributed.tasks import ImageResult, RunSpec
from minimaskrcnn.render.outputs import Pictures

__all__ = ["segment", "connect", "check_workers", "DistributedError", "ImageResult", "RunSpec", "Pictures"]


def segment(client, paths, weights: str, *, score_threshold: float = 0.5, mask_threshold: float = 0.5,
            classes: Optional[list] = None, pictures=None, image_ids: Optional[list] = None,
            load: Optional[dict] = None, retries: int = 2, ahead: Optional[int] = None) -> Iterator[ImageResult]:
    """Segment the image files `paths` on the cluster of `client`, yielding an `ImageResult` per image as each
    completes (in completion order; `.index` is the position in `paths`).

    weights: an official name or a file path that the workers can open (made absolute here).
    classes: class names to keep (None: all). pictures: a `Pictures` (`render.outputs`) to get the PNG
    files' bytes in `ImageResult.files` (the overlay, and cut-outs / label maps as it asks), or None for none.
    load: keyword arguments of `minimaskrcnn.load` on the workers (matterport-family config=, class_names=).
    image_ids: the COCO image ids of the results entries (default: `io.coco.assign_image_ids(paths)`).
    The model is loaded once on each worker first (`check_workers`: DistributedError if one cannot).
    """
    from minimaskrcnn.io.coco import assign_image_ids
    from minimaskrcnn.io.files import output_stems
    paths = [str(p) for p in paths]
    weights = absolute_weights(str(weights))
    info = check_workers(client, weights, load)
    keep = None
    if classes:
        lookup = {c.lower(): i for i, c in enumerate(info.class_names) if i > 0}
        unknown = [c for c in classes if c.lower() not in lookup]
        if unknown:
            raise ValueError(f"classes: {', '.join(map(repr, unknown))} not among the model's classes")
        keep = tuple(sorted({lookup[c.lower()] for c in classes}))
    ids = assign_image_ids(paths) if image_ids is None else list(image_ids)
    if len(ids) != len(paths):
        raise ValueError(f"image_ids: expected {len(paths)} ids, got {len(ids)}")
    spec = RunSpec(weights, float(score_threshold), float(mask_threshold), keep, pictures, load)
    jobs = ((i, p, image_id, stem) for i, (p, image_id, stem) in enumerate(zip(paths, ids, output_stems(paths))))
    yield from submit_images(client, jobs, spec, retries=retries, ahead=ahead)
