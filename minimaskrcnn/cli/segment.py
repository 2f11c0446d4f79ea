"""`minimaskrcnn segment` (images, folders, glob patterns) and `minimaskrcnn video` (frame by frame): the loops that
run the model over a run's inputs and write every output (`render/`, `io/`).

Every output is written atomically (`io.files`); an image that cannot be read or written is reported in one line and
the run goes on with the others, ending with status 1.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from minimaskrcnn.cli.options import FORMATTER, JSON_NAME, PROG, UsageError, load_options, positive
from minimaskrcnn.cli.collection import cluster, cmd_segment
from minimaskrcnn.cli.steps import class_ids, class_list, detector, load_model, objects_line, prepare_outdir, summary

SEGMENT_EPILOG = f"""outputs in OUTDIR, for an image named STEM.*:
  STEM_overlay.png            masks, boxes and "label score" drawn on the image (always)
  {JSON_NAME:<27} --json: all detections of the run in COCO results format (RLE masks); image ids
                              are the file names' numbers when all are numbers (000000039769.png -> 39769),
                              otherwise 1, 2, 3, ... in input order
  STEM_<k>_<label>.png        --cutouts: object k (by descending score) cropped to its box, transparent
                              outside its mask
  STEM_semantic.png           --semantic: class id per pixel (0 = background), STEM_semantic_color.png a preview
  STEM_instances.png          --instances: k per pixel for the k-th object by score (0 = background)
Where objects overlap, the higher score wins. Two inputs with the same STEM get STEM-2, STEM-3, ...

examples:
  {PROG} segment photo.jpg -o out/
  {PROG} segment photos/ -o out/ --recursive --json --semantic --score-threshold 0.7
  {PROG} segment "shots/*.png" -o out/ --cutouts --classes person,car --weights my_model.npz
  {PROG} segment photos/ -o out/ --json --resume          finish a killed run (OUTDIR's journal)
  {PROG} segment photos/ -o out/ --json --workers 2       two single-threaded worker processes (Dask)
  {PROG} segment photos/ -o out/ --json --scheduler tcp://head:8786   an existing Dask cluster"""

VIDEO_EPILOG = f"""Animated GIF works out of the box; other formats need PyAV: pip install "minimaskrcnn[video]".
Output format by extension: .mp4 .mkv .mov .m4v (H.264), .avi (MPEG-4), .webm (VP9), .gif.
The output holds the processed frames at the input frame rate / N (--every N), so it plays in real time.

examples:
  {PROG} video street.avi -o street_masks.mp4
  {PROG} video clip.mp4 -o clip.gif --every 3 --max-frames 300 --classes person
  {PROG} video clip.mp4 -o clip_masks.mp4 --jsonl clip.jsonl   (one JSON line per frame, masks as COCO RLE)"""


def add_commands(sub, general, model) -> None:
    """The segment and video subparsers; `general` and `model` are the shared option parents (cli.options)."""
    seg = sub.add_parser("segment", parents=[model, general], formatter_class=FORMATTER, epilog=SEGMENT_EPILOG,
                         help="find and segment the objects of images",
                         description="Detect and segment objects in images, folders of images and glob patterns.")
    seg.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns")
    seg.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    seg.add_argument("--recursive", "-r", action="store_true", help="also images in subfolders; ** in patterns")
    seg.add_argument("--json", action="store_true", help=f"write OUTDIR/{JSON_NAME} (COCO results format)")
    seg.add_argument("--cutouts", action="store_true", help="each object as a transparent PNG cropped to its box")
    seg.add_argument("--semantic", action="store_true", help="class-id map PNG and a colour preview")
    seg.add_argument("--instances", action="store_true", help="instance-id map PNG")
    run = _cluster_options(seg)
    run.add_argument("--resume", action="store_true",
                     help="finish the interrupted run of the same command in OUTDIR: skip the images whose outputs "
                          "its journal records as complete")
    seg.set_defaults(func=cmd_segment)

    vid = sub.add_parser("video", parents=[model, general], formatter_class=FORMATTER, epilog=VIDEO_EPILOG,
                         help="overlay video of the objects of a video, frame by frame",
                         description="Detect and segment objects frame by frame into an overlay video.")
    vid.add_argument("input", metavar="IN", help="video file (.gif, or any format FFmpeg reads with the video extra)")
    vid.add_argument("-o", "--output", required=True, metavar="OUT", help="output video file")
    vid.add_argument("--every", type=positive, default=1, metavar="N", help="process every N-th frame (default 1)")
    vid.add_argument("--max-frames", type=positive, metavar="N", help="read only the first N frames of the input")
    vid.add_argument("--jsonl", metavar="FILE", help="per-frame detections as JSON lines (frame, time, detections)")
    _cluster_options(vid)
    vid.set_defaults(func=cmd_video)


def _cluster_options(parser):
    """--scheduler / --workers (exclusive); returns the group for the command's own run options."""
    group = parser.add_argument_group("distributed and long runs (Dask: pip install \"minimaskrcnn[distributed]\")")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster of the scheduler at ADDRESS (tcp://host:port); the workers need "
                            "minimaskrcnn and the weights")
    where.add_argument("--workers", type=positive, metavar="N",
                       help="run on N single-threaded worker processes started on this machine (a local Dask cluster)")
    return group


def cmd_video(args) -> int:
    from minimaskrcnn.atomic import protect
    from minimaskrcnn.cli.progress import Progress
    from minimaskrcnn.io import video

    wanted = class_list(args.classes)
    try:
        video.check_support(args.input, args.output)                 # a missing PyAV is an ImportError: status 1
    except ValueError as e:                                          # unknown output format: a usage error
        raise UsageError(str(e)) from None
    if not os.path.isfile(args.input):
        raise video.VideoReadError(f"{args.input}: {'is a directory' if os.path.isdir(args.input) else 'no such file'}")
    if os.path.realpath(args.input) in {os.path.realpath(p) for p in (args.output, args.jsonl) if p}:
        raise UsageError(f"{args.input}: refusing to overwrite the input video")
    if args.jsonl and os.path.realpath(args.jsonl) == os.path.realpath(args.output):
        raise UsageError(f"{args.jsonl}: the JSON lines file and the output video must differ")
    with cluster(args) as client:
        load = load_options(args)
        if client is None:
            model, keep = load_model(args.weights, wanted, **load)
            detect, process = detector(model, args.score_threshold, keep), None
        else:                                                        # the workers load it; nothing written before
            from minimaskrcnn.distributed import RunSpec, absolute_weights, check_workers
            from minimaskrcnn.distributed.client import map_frames
            weights = absolute_weights(args.weights)
            keep = class_ids(wanted, check_workers(client, weights, load).class_names)
            spec = RunSpec(weights, args.score_threshold, args.mask_threshold, keep, None, load, bool(args.jsonl))
            detect, process = None, lambda frames: map_frames(client, frames, spec)
        for target in filter(None, (args.output, args.jsonl)):
            prepare_outdir(os.path.dirname(os.path.abspath(target)))
        with Progress(None, "frames", enabled=None if not args.quiet else False) as bar:
            s = segment_video(detect, args.input, args.output, every=args.every, max_frames=args.max_frames,
                              jsonl=args.jsonl, mask_threshold=args.mask_threshold, progress=bar,
                              protected=protect([args.input]), process=process)
    mean = s.seconds_detecting / s.frames_processed
    summary([f"{s.frames_processed} frames processed of {s.frames_read} read; {mean:.2f} s per frame",
              objects_line(s.objects) + " (summed over frames)",
              "outputs: " + ", ".join(filter(None, (args.output, args.jsonl)))], args.quiet)
    return 0


@dataclass
class VideoSummary:
    frames_read: int = 0
    frames_processed: int = 0
    seconds_detecting: float = 0.0
    objects: Counter = field(default_factory=Counter)


def segment_video(detect: Optional[Callable], src, dst, *, every: int = 1, max_frames: Optional[int] = None,
                  jsonl=None, mask_threshold: float = 0.5, progress=None, protected=frozenset(),
                  process: Optional[Callable] = None) -> VideoSummary:
    """Run `detect((H, W, 3) uint8) -> Detections` on the selected frames of `src` and write the overlays to `dst`
    (and one JSON line per processed frame to `jsonl`: frame index, time in seconds, detections with RLE masks).
    Outputs appear only when the whole video is done (atomic rename); `progress` is an optional `Progress` whose
    total is set here when the container knows its length.

    `process`, instead of `detect`, maps an iterable of (frame index, (H, W, 3) uint8) to `render.outputs.FrameOutput`s
    in the same order (a cluster's pipelined map, `distributed.client.map_frames`); the writer's calls are the same."""
    from minimaskrcnn.atomic import atomic_path
    from minimaskrcnn.io.video import VideoReadError, VideoWriter, open_video
    if process is None:
        process = functools.partial(_in_process_frames, detect, mask_threshold, jsonl is not None)
    if every < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError("every and max_frames must be positive")
    info, frames = open_video(src)
    if progress is not None:
        progress.total = expected_frames(info, every, max_frames)
    summary = VideoSummary()
    jsonl_path = atomic_path(jsonl, protected) if jsonl is not None else contextlib.nullcontext()
    try:
        with atomic_path(dst, protected) as tmp_video, jsonl_path as tmp_jsonl, \
                _open_or_none(tmp_jsonl) as lines, VideoWriter(tmp_video, info.fps / every) as writer:
            selected = collections.deque()                           # (frame, skipped durations) sent, not written

            def kept():
                for item in _select(frames, every, max_frames, summary):
                    selected.append(item)
                    yield item[0].index, item[0].image
            for out in process(kept()):
                frame, skipped = selected.popleft()
                summary.seconds_detecting += out.seconds
                summary.frames_processed += 1
                summary.objects.update(out.label_names)
                writer.write(out.overlay, duration=frame.duration)
                for duration in skipped:
                    writer.extend_last(duration)                     # a skipped frame: the kept one lasts longer
                if lines is not None:
                    lines.write(json.dumps(_frame_record(frame, out)) + "\n")
                if progress is not None:
                    progress.update()
            if summary.frames_processed == 0:
                raise VideoReadError(f"{src}: no frames decoded")
    finally:
        frames.close()                                               # releases the decoder when stopped early
    return summary


def _open_or_none(path):
    return open(path, "w", encoding="utf-8") if path is not None else contextlib.nullcontext()


def _select(frames, every: int, max_frames: Optional[int], summary: VideoSummary):
    """(frame, [durations of the skipped frames after it]) for every `every`-th of the first `max_frames` frames;
    a frame is given once the next kept one (or the end) is read, so its skipped list is complete."""
    pending = None
    for frame in frames:
        if max_frames is not None and frame.index >= max_frames:
            break
        summary.frames_read += 1
        if frame.index % every:
            if pending is not None:
                pending[1].append(frame.duration)
            continue
        if pending is not None:
            yield pending
        pending = (frame, [])
    if pending is not None:
        yield pending


def _in_process_frames(detect: Callable, mask_threshold: float, entries: bool, frames):
    from minimaskrcnn.render.outputs import frame_output
    for index, image in frames:
        t0 = time.perf_counter()
        det = detect(image)
        out = frame_output(index, image, det, mask_threshold, time.perf_counter() - t0, entries)
        del det                  # not held while the next frame is predicted (README: Speed in your own program)
        yield out


def _frame_record(frame, out) -> dict:
    names = [out.class_names[e["category_id"]] for e in out.entries]
    dets = [{"label": n, **{k: v for k, v in e.items() if k != "image_id"}} for n, e in zip(names, out.entries)]
    return {"frame": frame.index, "time": round(frame.time, 6), "detections": dets}


def expected_frames(info, every: int, max_frames: Optional[int]) -> Optional[int]:
    """How many frames `segment_video` will process, when the container knows its frame count."""
    n = info.frame_count if max_frames is None else min(info.frame_count or max_frames, max_frames)
    return None if not n else (n + every - 1) // every
