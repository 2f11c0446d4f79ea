"""The bench worker's `flops` answer (crosscheck/bench_workers.py): the per-kind direct-method FLOPs of a real forward
pass and the matmul rate that the README's direct-GEMM ratio divides by. Timings are never asserted; what is checked
is that the timed pass sees every layer kind of the model and which samples the rate is taken from."""
import functools

from minimaskrcnn.crosscheck import bench_workers
from minimaskrcnn.demo.shapes import make_sample, shipped_model_path


@functools.lru_cache(1)
def _demo_run():
    return bench_workers._minimaskrcnn_runner(str(shipped_model_path()), 1, ""), make_sample(seed=3).image


def test_flops_answer_counts_every_layer_kind_of_a_forward_pass():
    run, image = _demo_run()
    answer = bench_workers._flop_rates(run, image, 1)
    # ResNet-18 body to layer3 + 64-channel FPN + heads: stride-1 3x3 (Winograd), the strided 3x3 ones and the 7x7
    # stem (im2col), 1x1 (FPN laterals, projections, RPN head), the box head's fully connected layers, the mask deconv
    assert set(answer["kinds"]) == {"3x3 Winograd", "im2col", "1x1", "linear", "deconv 2x2"}
    for flops, seconds in answer["kinds"].values():
        assert flops > 0 and seconds > 0
    assert answer["matmul_square_gflops"] > 0 and answer["matmul_gflops"] > 0 and answer["threads"] == 1


def test_the_square_matmul_rate_is_the_best_of_the_samples_before_and_after_the_pass(monkeypatch):
    run, image = _demo_run()
    samples = iter([50.0, 200.0, 120.0])            # 2048^3 before the pass, after it; then the largest layer's shape
    monkeypatch.setattr(bench_workers, "_matmul_gflops", lambda *shape, **_: next(samples))
    answer = bench_workers._flop_rates(run, image, 1)
    assert answer["matmul_square_gflops"] == 200.0 and answer["matmul_gflops"] == 120.0
