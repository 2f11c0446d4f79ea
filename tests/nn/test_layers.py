"""minimaskrcnn.layers and .convolution against the float64 loop references (tests/naive_layers.py) and torch.

Tolerances. A float32 sum of n products, in any order, with or without FMA, is within gamma_n * sum|terms| of the
exact value (Higham Eq. 3.5; `naive_layers.gamma_bound`). The float64 references are exact to ~1e-16 relative, so
`|ours - ref| <= gamma_{n} * (|W| conv |x| + |b| + |residual|)` elementwise is a guaranteed bound, with n the
accumulation length (C*k*k products, + bias, + residual). Against torch, whose own error obeys the same bound, twice
that. Copies (im2col, max pooling, nearest upsampling) must be exact. These tests pin the im2col path
(`winograd=False`); the Winograd 3x3 path has its own bound in tests/nn/test_winograd.py.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minimaskrcnn.nn import convolution, layers
import oracle
from naive_layers import (batchnorm_naive, conv2d_naive, conv_transpose2x2_naive, gamma_bound,
                          im2col_channels_last_naive, im2col_naive, linear_naive, max_pool2d_naive)


@contextlib.contextmanager
def im2col_block_bytes(n_bytes):
    """Temporarily shrink the im2col buffer so one convolution runs in many blocks."""
    saved = convolution.IM2COL_BLOCK_BYTES
    convolution.IM2COL_BLOCK_BYTES = n_bytes
    try:
        yield
    finally:
        convolution.IM2COL_BLOCK_BYTES = saved


def random_array(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@st.composite
def conv_cases(draw):
    """Small convolutions with every kernel/stride/padding combination the models use, and odd ones."""
    k = draw(st.sampled_from([1, 2, 3, 5, 7]))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k))
    h = draw(st.integers(max(1, k - 2 * p), 13))
    w = draw(st.integers(max(1, k - 2 * p), 13))
    return dict(c_in=draw(st.integers(1, 6)), c_out=draw(st.integers(1, 5)), n=draw(st.integers(0, 3)), h=h, w=w,
                k=k, s=s, p=p, seed=draw(st.integers(0, 2**31)), scale=10.0 ** draw(st.integers(-3, 3)),
                block_bytes=draw(st.sampled_from([1, 200, 4096, convolution.IM2COL_BLOCK_BYTES])))


@given(conv_cases())
def test_im2col_kernels_are_exact_copies(case):
    rng = np.random.default_rng(case["seed"])
    k, s, p = case["k"], case["s"], case["p"]
    h_out, w_out = (case["h"] + 2 * p - k) // s + 1, (case["w"] + 2 * p - k) // s + 1
    # image layout, in arbitrary blocks of output rows
    x = random_array(rng, (case["c_in"], case["h"], case["w"]))
    expected = im2col_naive(x, k, s, p)                                      # (C*k*k, H'*W')
    got = np.full_like(expected, np.nan)
    split = sorted({0, h_out, *rng.integers(0, h_out, 2).tolist()})
    step = int(rng.integers(1, 4))                                           # as run_interleaved splits it
    for r0, r1 in zip(split[:-1], split[1:]):
        for first in range(step):
            convolution._im2col_kernel(x, k, s, p, w_out, r0, r1, got[:, r0 * w_out:r1 * w_out], first, step)
    np.testing.assert_array_equal(got, expected)
    # channels-last batch, in arbitrary blocks of output positions
    x = random_array(rng, (case["n"], case["h"], case["w"], case["c_in"]))
    expected = im2col_channels_last_naive(x, k, s, p)                        # (N*H'*W', k*k*C)
    got = np.full_like(expected, np.nan)
    m = len(expected)
    split = sorted({0, m, *rng.integers(0, m + 1, 2).tolist()})
    for m0, m1 in zip(split[:-1], split[1:]):
        convolution._im2col_channels_last_kernel(x, k, s, p, h_out, w_out, m0, m1, got[m0:m1])
    np.testing.assert_array_equal(got, expected)


def conv_reference(x, weight, bias, s, p):
    """(exact float64 result, magnitude sum |W||x| + |b|) of one image x (C, H, W)."""
    return (conv2d_naive(x, weight, bias, s, p),
            conv2d_naive(np.abs(x), np.abs(weight), np.abs(bias), s, p))


@given(conv_cases(), st.booleans(), st.booleans())
def test_conv2d_within_float32_bound_of_naive_and_torch(case, relu, with_residual):
    torch = oracle.torch()
    rng = np.random.default_rng(case["seed"])
    x = random_array(rng, (case["c_in"], case["h"], case["w"]), case["scale"])
    weight = random_array(rng, (case["c_out"], case["c_in"], case["k"], case["k"]))
    bias = random_array(rng, case["c_out"], case["scale"])
    exact, magnitude = conv_reference(x, weight, bias, case["s"], case["p"])    # (C', H', W')
    residual = random_array(rng, exact.shape, case["scale"]) if with_residual else None
    if with_residual:
        exact, magnitude = exact + residual, magnitude + np.abs(residual)
    if relu:
        exact = np.maximum(exact, 0)
    with im2col_block_bytes(case["block_bytes"]):
        conv = layers.make_conv(weight, bias, stride=case["s"], padding=case["p"], winograd=False)
        got = layers.conv2d(x, conv, relu=relu, residual=residual)
    assert got.shape == exact.shape and got.dtype == np.float32
    bound = gamma_bound(case["c_in"] * case["k"] ** 2 + 2) * magnitude
    assert np.all(np.abs(got - exact) <= bound)

    ref = torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight), torch.from_numpy(bias),
                                     stride=case["s"], padding=case["p"])[0].numpy()
    if with_residual:
        ref = ref + residual
    if relu:
        ref = np.maximum(ref, 0)
    assert np.all(np.abs(got - ref) <= 2 * bound)


@given(conv_cases(), st.booleans())
def test_conv2d_rois_within_float32_bound_of_naive_and_torch(case, relu):
    torch = oracle.torch()
    rng = np.random.default_rng(case["seed"])
    x = random_array(rng, (case["n"], case["h"], case["w"], case["c_in"]), case["scale"])   # channels-last
    weight = random_array(rng, (case["c_out"], case["c_in"], case["k"], case["k"]))
    bias = random_array(rng, case["c_out"], case["scale"])
    x_nchw = x.transpose(0, 3, 1, 2)
    h_out, w_out = (case["h"] + 2 * case["p"] - case["k"]) // case["s"] + 1, (case["w"] + 2 * case["p"] - case["k"]) \
        // case["s"] + 1
    refs = [conv_reference(xi, weight, bias, case["s"], case["p"]) for xi in x_nchw]
    exact, magnitude = (np.array([r[i] for r in refs]).reshape(-1, case["c_out"], h_out, w_out).transpose(0, 2, 3, 1)
                        for i in (0, 1))                                     # (N, H', W', C')
    if relu:
        exact = np.maximum(exact, 0)
    with im2col_block_bytes(case["block_bytes"]):
        conv = layers.make_conv(weight, bias, stride=case["s"], padding=case["p"], channels_last=True,
                                winograd=False)
        got = layers.conv2d_rois(x, conv, relu=relu)
    assert got.shape == exact.shape and got.dtype == np.float32
    bound = gamma_bound(case["c_in"] * case["k"] ** 2 + 1) * magnitude
    assert np.all(np.abs(got - exact) <= bound)
    if case["n"] == 0:
        return
    ref = torch.nn.functional.conv2d(torch.from_numpy(x_nchw.copy()), torch.from_numpy(weight),
                                     torch.from_numpy(bias), stride=case["s"], padding=case["p"]).numpy()
    ref = ref.transpose(0, 2, 3, 1)                                          # (N, C', H', W') -> (N, H', W', C')
    assert np.all(np.abs(got - (np.maximum(ref, 0) if relu else ref)) <= 2 * bound)


@pytest.mark.parametrize("c_in, c_out, h, w, k, s, p", [
    (3, 16, 96, 131, 7, 2, 3),      # the ResNet stem at a small odd size
    (64, 32, 50, 68, 3, 1, 1),      # a 3x3 at a P4-like size
    (48, 40, 33, 47, 3, 2, 1),      # ResNet v1.5 strided 3x3, odd input
    (96, 64, 25, 34, 1, 2, 0),      # the downsample 1x1 stride 2
    (128, 256, 20, 27, 1, 1, 0),    # a 1x1 (no im2col)
])
def test_conv2d_realistic_shapes_match_torch(c_in, c_out, h, w, k, s, p):
    torch = oracle.torch()
    rng = np.random.default_rng(c_in * 1000 + h)
    x = random_array(rng, (c_in, h, w))
    weight = random_array(rng, (c_out, c_in, k, k), 1 / np.sqrt(c_in * k * k))
    bias = random_array(rng, c_out)
    with im2col_block_bytes(256 * 2**10):                                    # several blocks at these sizes
        got = layers.conv2d(x, layers.make_conv(weight, bias, stride=s, padding=p, winograd=False), relu=True)
    ref = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight),
                                                torch.from_numpy(bias), stride=s, padding=p))[0].numpy()
    magnitude = torch.nn.functional.conv2d(torch.from_numpy(np.abs(x))[None], torch.from_numpy(np.abs(weight)),
                                           torch.from_numpy(np.abs(bias)), stride=s, padding=p)[0].numpy()
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= 2 * gamma_bound(c_in * k * k + 1) * magnitude * 1.001)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
@pytest.mark.parametrize("with_conv_bias", [False, True])
def test_fold_batchnorm_matches_conv_then_batchnorm(eps, with_conv_bias):
    torch = oracle.torch()
    rng = np.random.default_rng(7)
    c_in, c_out, k = 5, 6, 3
    x = random_array(rng, (c_in, 9, 11))
    weight = random_array(rng, (c_out, c_in, k, k))
    conv_bias = random_array(rng, c_out) if with_conv_bias else None
    gamma, beta, mean = rng.uniform(0.7, 1.3, c_out), rng.normal(0, 0.1, c_out), rng.normal(0, 1, c_out)
    var = rng.uniform(0.01, 4, c_out)
    bn = [a.astype(np.float32) for a in (gamma, beta, mean, var)]
    sd = {"conv.weight": weight, "bn.weight": bn[0], "bn.bias": bn[1], "bn.running_mean": bn[2],
          "bn.running_var": bn[3]}
    if with_conv_bias:
        sd["conv.bias"] = conv_bias
    got = layers.conv2d(x, layers.load_conv(sd, "conv", 3, padding=1, bn="bn", eps=eps, winograd=False))
    exact = batchnorm_naive(conv2d_naive(x, weight, conv_bias, 1, 1), *bn, eps)
    scale = np.abs(bn[0] / np.sqrt(bn[3].astype(np.float64) + eps))[:, None, None]
    magnitude = conv2d_naive(np.abs(x), np.abs(weight), None if conv_bias is None else np.abs(conv_bias), 1, 1)
    magnitude = (magnitude + np.abs(bn[2])[:, None, None]) * scale + np.abs(bn[1])[:, None, None]
    # folding rounds W*scale and b' once more each: n + 3 roundings per output
    assert np.all(np.abs(got - exact) <= gamma_bound(c_in * k * k + 3) * magnitude)
    t = torch.nn.functional.conv2d(torch.from_numpy(x)[None], torch.from_numpy(weight),
                                   None if conv_bias is None else torch.from_numpy(conv_bias), padding=1)
    ref = torch.nn.functional.batch_norm(t, *(torch.from_numpy(a) for a in (bn[2], bn[3], bn[0], bn[1])),
                                         training=False, eps=eps)[0].numpy()
    assert np.all(np.abs(got - ref) <= 2 * gamma_bound(c_in * k * k + 3) * magnitude)


def test_fold_batchnorm_rejects_nonpositive_variance():
    with pytest.raises(ValueError, match="running_var"):
        layers.fold_batchnorm(np.ones((2, 1, 1, 1)), None, np.ones(2), np.zeros(2), np.zeros(2), np.zeros(2), 0.0)


@given(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12), st.sampled_from([(3, 2, 1), (2, 2, 0), (3, 1, 1),
                                                                                 (1, 2, 0), (3, 3, 0)]),
       st.integers(0, 2**31), st.booleans())
def test_max_pool2d_is_exact(c, h, w, ksp, seed, with_nan):
    torch = oracle.torch()
    k, s, p = ksp
    if h + 2 * p < k or w + 2 * p < k:
        return
    rng = np.random.default_rng(seed)
    x = -np.abs(random_array(rng, (c, h, w))) - 1                            # all negative: zero padding would win
    if with_nan:
        x[rng.integers(0, c), rng.integers(0, h), rng.integers(0, w)] = np.nan
    got = layers.max_pool2d(x, k, s, p)
    np.testing.assert_array_equal(got, max_pool2d_naive(x, k, s, p))
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x)[None], k, s, p)[0].numpy()
    np.testing.assert_array_equal(got, ref)


@given(st.integers(1, 6), st.integers(1, 5), st.integers(0, 3), st.integers(1, 7), st.integers(1, 7),
       st.integers(0, 2**31), st.booleans())
def test_conv_transpose2x2_within_bound_of_naive_and_torch(c_in, c_out, n, h, w, seed, relu):
    torch = oracle.torch()
    rng = np.random.default_rng(seed)
    x = random_array(rng, (n, h, w, c_in))                                   # channels-last
    weight, bias = random_array(rng, (c_in, c_out, 2, 2)), random_array(rng, c_out)
    deconv = layers.load_conv_transpose2x2({"d.weight": weight, "d.bias": bias}, "d")
    got = layers.conv_transpose2x2(x, deconv, relu=relu)
    exact = conv_transpose2x2_naive(x, weight, bias)
    magnitude = conv_transpose2x2_naive(np.abs(x), np.abs(weight), np.abs(bias))
    if relu:
        exact = np.maximum(exact, 0)
    bound = gamma_bound(c_in + 1) * magnitude
    assert got.shape == (n, 2 * h, 2 * w, c_out) and got.dtype == np.float32
    assert np.all(np.abs(got - exact) <= bound)
    if n == 0:
        return
    ref = torch.nn.functional.conv_transpose2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                               torch.from_numpy(weight), torch.from_numpy(bias), stride=2).numpy()
    ref = ref.transpose(0, 2, 3, 1)                                          # (N, C', 2H, 2W) -> (N, 2H, 2W, C')
    if relu:
        ref = np.maximum(ref, 0)
    assert np.all(np.abs(got - ref) <= 2 * bound)


@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**31), st.booleans())
def test_linear_within_bound_of_naive_and_torch(k, n_in, n_out, seed, relu):
    torch = oracle.torch()
    rng = np.random.default_rng(seed)
    x, weight, bias = random_array(rng, (k, n_in)), random_array(rng, (n_out, n_in)), random_array(rng, n_out)
    got = layers.linear(x, layers.load_linear({"fc.weight": weight, "fc.bias": bias}, "fc"), relu=relu)
    exact = linear_naive(x, weight, bias)
    if relu:
        exact = np.maximum(exact, 0)
    bound = gamma_bound(n_in + 1) * (np.abs(x) @ np.abs(weight.T).astype(np.float64) + np.abs(bias))
    assert np.all(np.abs(got - exact) <= bound)
    ref = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias)).numpy()
    assert np.all(np.abs(got - (np.maximum(ref, 0) if relu else ref)) <= 2 * bound)


@given(st.integers(1, 20), st.integers(1, 20), st.integers(1, 45), st.integers(1, 45))
def test_upsample_nearest_is_torchs(h, w, h_out, w_out):
    torch = oracle.torch()
    x = np.arange(2 * h * w, dtype=np.float32).reshape(2, h, w)
    got = layers.upsample_nearest(x, (h_out, w_out))
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(h_out, w_out), mode="nearest")[0]
    np.testing.assert_array_equal(got, ref.numpy())


@given(st.integers(1, 3), st.integers(1, 20), st.integers(1, 20), st.sampled_from([1, 2, None]),
       st.integers(0, 2**31))
def test_add_upsampled_nearest_is_the_sum_with_the_upsampled_map_bit_for_bit(c, h, w, factor, seed):
    """The FPN's in-place merge equals `out + upsample_nearest(x)` exactly, for the 2x case and any other size."""
    rng = np.random.default_rng(seed)
    h_out, w_out = (h * factor, w * factor) if factor else (int(rng.integers(1, 45)), int(rng.integers(1, 45)))
    x = random_array(rng, (c, h, w))
    out = random_array(rng, (c, h_out, w_out))
    out[0, 0, 0] = np.nan                                                   # NaN propagates as in the sum
    expected = out + layers.upsample_nearest(x, (h_out, w_out))
    got = layers.add_upsampled_nearest(out, x)
    assert got is out
    np.testing.assert_array_equal(got, expected)


def test_relu_keeps_nan_and_zeroes_negatives():
    np.testing.assert_array_equal(layers.relu(np.array([-1, 0, 2, np.nan], np.float32)), [0, 0, 2, np.nan])


def test_forward_functions_name_the_bad_argument():
    conv = layers.make_conv(np.zeros((2, 3, 3, 3), np.float32), padding=1)
    with pytest.raises(ValueError, match="x: expected"):
        layers.conv2d(np.zeros((4, 5, 5), np.float32), conv)
    with pytest.raises(ValueError, match="channels-last"):
        layers.conv2d_rois(np.zeros((1, 5, 5, 3), np.float32), conv)
    with pytest.raises(ValueError, match="too small"):
        layers.conv2d(np.zeros((3, 1, 0), np.float32), conv)
    with pytest.raises(ValueError, match="weight"):
        layers.make_conv(np.zeros((2, 3, 3, 1), np.float32))
    with pytest.raises(ValueError, match="x: expected"):
        layers.max_pool2d(np.zeros((5, 5), np.float32))


def test_load_conv_checks_kernel_and_bias():
    sd = {"c.weight": np.zeros((2, 3, 3, 3), np.float32)}
    with pytest.raises(ValueError, match=r"c\.weight"):
        layers.load_conv(sd, "c", 1)
    with pytest.raises(KeyError, match=r"c\.bias"):      # no norm, no bias: weights of another architecture
        layers.load_conv(sd, "c", 3)
