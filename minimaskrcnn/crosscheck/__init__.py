"""Measuring agreement with other implementations, and speed against them. Only this package imports torch,
onnx and onnxruntime (and only inside functions that need them): the peers are never a dependency of the network.

Modules, in reading order:
    matching.py      the parity protocol: detections matched one to one by label and box IoU; `MatchStats`
    compare.py       two traces compared stage by stage, with facts §10.4's tolerances
    torch_trace.py   torchvision's model built from the same weights, and its trace recorded through hooks
    evaluate.py      COCO-style AP and parity over a set of images
    onnx.py          `crosscheck`: an ONNX export checked stage by stage, each stage fed the export's own input
    onnx_graph.py    reading a torchvision R-CNN export: module scopes, constants, stage-boundary tensors
    onnx_weights.py  the export's initializers mapped back to state-dict names (BatchNorm folding undone or kept)
    onnx_run.py      ONNX Runtime with the stage boundaries as extra outputs; its trace
    bench.py         speed and memory against the peers (`minimaskrcnn bench`): the driver
    bench_workers.py the worker processes, one peer each (minimaskrcnn, torchvision, ONNX Runtime)
    bench_report.py  the text report
"""
