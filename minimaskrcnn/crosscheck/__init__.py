"""Measuring agreement with other implementations, and speed against them. Only this package imports torch (and
only inside functions that need it): the oracles are never a dependency of the network.

Modules, in reading order:
    matching.py      the parity protocol: detections matched one to one by label and box IoU; `MatchStats`
    compare.py       two traces compared stage by stage, with facts §10.4's tolerances
    torch_trace.py   torchvision's model built from the same weights, and its trace recorded through hooks
    evaluate.py      COCO-style AP and parity over a set of images
    bench.py         speed and memory against the peers (`minimaskrcnn bench`)
"""
