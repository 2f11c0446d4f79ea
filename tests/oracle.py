"""The test oracle: torch and torchvision, imported in one place.

torchvision is what minimaskrcnn must reproduce, so a test that needs it and cannot import it FAILS (never skips):
a green run without the oracle would prove nothing.
"""
import pytest


def torch():
    try:
        import torch as _torch
    except Exception as e:  # ImportError, or a broken CUDA/CPU build mismatch
        pytest.fail(f"torch (the test oracle) cannot be imported: {e}. Install with: pip install '.[test]'",
                    pytrace=False)
    _torch.set_num_threads(1)
    return _torch


def torchvision():
    torch()
    try:
        import torchvision as _tv
        import torchvision.ops  # noqa: F401  (loads the compiled C++ ops: fails if torch and torchvision mismatch)
        _tv.ops.nms(_tv_empty_boxes(), _torch_empty(), 0.5)
    except Exception as e:
        pytest.fail(f"torchvision (the test oracle) cannot be used: {e}. Install with: pip install '.[test]'",
                    pytrace=False)
    return _tv


def _tv_empty_boxes():
    import torch as _torch
    return _torch.zeros((0, 4))


def _torch_empty():
    import torch as _torch
    return _torch.zeros((0,))
