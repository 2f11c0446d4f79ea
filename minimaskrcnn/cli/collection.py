"""`minimaskrcnn segment`'s run over a collection of images: in this process, or on a Dask cluster (`--scheduler`,
`--workers`, through `minimaskrcnn.distributed`), with each image's results recorded in the output folder's journal
as they are produced (`io.journal`), so that `--resume` finishes a killed run.

Both ways write the same files: in this process the pictures are written by `render.outputs.write_image_outputs`;
on a cluster the workers render them with the same function and the bytes are written here, where the output folder
is. The results JSON is assembled at the end in input order from the journal's records, so it is the same whichever
way, in whatever order, and in however many runs the images were done.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter

from minimaskrcnn.cli.options import JSON_NAME, PROG, describe, load_options
from minimaskrcnn.cli.steps import class_ids, class_list, detector, load_model, objects_line, prepare_outdir, summary


@contextlib.contextmanager
def cluster(args):
    """The Dask client of --scheduler / --workers, or None for a run in this process."""
    if args.scheduler is None and args.workers is None:
        yield None
        return
    from minimaskrcnn.distributed import connect
    if not args.debug:                                               # Dask's own log lines ("Couldn't gather 1 keys,
        import logging                                               # rescheduling" after a worker died) are not
        logging.getLogger("distributed").setLevel(logging.CRITICAL)  # errors of the run: those are ours, one line
    with connect(args.scheduler, args.workers) as client:
        yield client


def cmd_segment(args) -> int:
    wanted = class_list(args.classes)
    with cluster(args) as client:
        return _run(args, wanted, client)


def _run(args, wanted: list, client) -> int:
    from minimaskrcnn.atomic import protect
    from minimaskrcnn.cli.progress import Progress
    from minimaskrcnn.io import coco, files
    from minimaskrcnn.io.images import find_images
    from minimaskrcnn.io.journal import Journal
    from minimaskrcnn.render.outputs import Pictures

    if client is None:
        outdir = prepare_outdir(args.output)
    inputs, problems = find_images(args.inputs, args.recursive)
    for item, why in problems:
        print(f"{PROG}: error: {item}: {why}", file=sys.stderr)
    if not inputs:
        return 2                                                     # nothing to do: each input's problem is said
    load = load_options(args)                                        # matterport --config / --class-names
    if client is None:
        model, keep = load_model(args.weights, wanted, **load)
        weights, detect = args.weights, detector(model, args.score_threshold, keep)
    else:                                                            # the workers load it; nothing written before
        from minimaskrcnn.distributed import absolute_weights, check_workers
        weights = absolute_weights(args.weights)
        keep = class_ids(wanted, check_workers(client, weights, load).class_names)
        outdir = prepare_outdir(args.output)

    pictures = Pictures(args.mask_threshold, args.cutouts, args.semantic, args.instances)
    protected = protect(inputs)
    ids, stems = coco.assign_image_ids(inputs), files.output_stems(inputs)
    identities = [_identity(p) for p in inputs]
    journal = Journal.open(outdir, _settings(args, weights, keep, load), args.resume)
    records = {}
    for i in range(len(inputs)) if journal.resumed else ():
        record = journal.usable(i, identities[i], stems[i], ids[i], outdir)
        if record is not None:
            records[i] = record
    resumed, seconds, failures = len(records), [], 0
    todo = [i for i in range(len(inputs)) if i not in records]
    plan = (inputs, stems, ids, identities, todo)
    with contextlib.closing(journal), Progress(len(inputs), "images", enabled=None if not args.quiet else False) as bar:
        bar.update(resumed)
        if client is None:
            outcomes = _in_process(plan, detect, outdir, pictures, args.json, protected)
        else:
            from minimaskrcnn.distributed import RunSpec
            outcomes = _on_cluster(plan, client, RunSpec(weights, args.score_threshold, args.mask_threshold, keep,
                                                       pictures, load), args.json, outdir, protected)
        for i, record, error in outcomes:
            if error is None:
                journal.append(record)
                records[i] = record
                seconds.append(record["seconds"])
            else:
                failures += 1
                bar.write(f"{PROG}: error: {error}")
            bar.update()
    if args.json:
        results = [e for i in sorted(records) for e in records[i]["entries"]]
        files.write_json(results, os.path.join(outdir, JSON_NAME), protected)
    journal.finish()
    objects = Counter(name for r in records.values() for name in r["objects"])
    done = len(records)
    earlier = f" ({resumed} from the interrupted run)" if resumed else ""
    mean = f"; {sum(seconds) / len(seconds):.2f} s per image" if seconds else ""
    summary([f"{done} of {len(inputs) + len(problems)} inputs done{earlier}, {failures + len(problems)} failed{mean}",
             objects_line(objects), f"outputs in {outdir}"], args.quiet)
    return 1 if failures or problems else 0


def _identity(path) -> dict:
    from minimaskrcnn.io.journal import input_identity
    try:
        return input_identity(path)
    except OSError:                                                  # gone: it fails when read, and is not resumed
        return {"input": os.path.realpath(path)}


def _settings(args, weights: str, keep, load: dict) -> dict:
    """What decides a run's outputs: --resume continues only a run with the same."""
    from minimaskrcnn._version import __version__
    if os.path.isfile(weights):
        st = os.stat(weights)
        weights_id = [os.path.realpath(weights), st.st_size, st.st_mtime_ns]
    else:
        weights_id = [weights]
    return {"minimaskrcnn": __version__, "weights": weights_id, "load": load, "score_threshold": args.score_threshold,
            "mask_threshold": args.mask_threshold, "classes": None if keep is None else [int(k) for k in keep],
            "json": bool(args.json), "cutouts": bool(args.cutouts), "semantic": bool(args.semantic),
            "instances": bool(args.instances)}


def _record(i, plan, written, label_names, seconds, entries) -> dict:
    inputs, stems, ids, identities, _ = plan
    record = {"index": i, **identities[i], "stem": stems[i], "image_id": ids[i],
              "files": [os.path.basename(p) for p in written], "objects": list(label_names), "seconds": seconds}
    if entries is not None:
        record["entries"] = entries
    return record


def _in_process(plan, detect, outdir, pictures, want_json: bool, protected):
    """(index, journal record, None) or (index, None, error line) per image, run here."""
    from minimaskrcnn.image import read_image
    from minimaskrcnn.io.coco import coco_results
    from minimaskrcnn.render.outputs import write_image_outputs
    inputs, stems, ids, _, todo = plan
    for i in todo:
        path = inputs[i]
        try:
            t0 = time.perf_counter()
            image = read_image(path)
            det = detect(image)
            seconds = time.perf_counter() - t0
            written = write_image_outputs(outdir, stems[i], image, det, pictures, protected)
            entries = coco_results(det, ids[i], os.path.basename(path), pictures.mask_threshold) if want_json else None
        except (ValueError, OSError) as e:                           # unreadable image, unwritable output
            yield i, None, describe(e)
            continue
        record = _record(i, plan, written, det.label_names, seconds, entries)
        del det                  # not held while the next image is predicted (README: Speed in your own program)
        yield i, record, None


def _on_cluster(plan, client, spec, want_json: bool, outdir, protected):
    """The same as `_in_process`, the images run on the cluster; their picture files' bytes written here."""
    from minimaskrcnn.atomic import atomic_path
    from minimaskrcnn.distributed.client import submit_images
    inputs, stems, ids, _, todo = plan
    for r in submit_images(client, ((i, inputs[i], ids[i], stems[i]) for i in todo), spec):
        if r.error is not None:
            yield r.index, None, r.error
            continue
        try:
            written = []
            for name, data in r.files.items():
                path = os.path.join(outdir, name)
                with atomic_path(path, protected) as tmp, open(tmp, "wb") as f:
                    f.write(data)
                written.append(path)
        except (ValueError, OSError) as e:                           # an unwritable output
            yield r.index, None, describe(e)
            continue
        yield r.index, _record(r.index, plan, written, r.label_names, r.seconds, r.entries if want_json else None), None
