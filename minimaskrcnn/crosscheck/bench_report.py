"""The text report of `minimaskrcnn bench` (`bench.py` measures; this formats its raw results, also kept as JSON)."""
from __future__ import annotations

import platform

# torchvision in a process with our malloc setting (bench.py): a reference for that setting, not a peer
MALLOPT_PEER = "torchvision+mallopt"


def report(raw: dict) -> str:
    v = raw["versions"]
    lines = [f"minimaskrcnn bench {raw['date']}, {raw['threads']} thread(s) per peer, "
             f"{platform.processor() or platform.machine()}; " + ", ".join(f"{k} {x}" for k, x in v.items())]
    if raw["forced"]:
        lines.append("OpenBLAS forced by " + ", ".join(f"{k}={x}" for k, x in raw["forced"].items()))
    lines.append("")
    for r in raw["results"]:
        lines += _size_lines(r)
    for label, s in raw["startup"].items():
        lines.append(f"fresh process, {label}: {s['process']:.2f} s to the first result (import {s['import']:.2f} s, "
                     f"load weights {s['load_weights']:.2f} s, first predict {s['first_predict']:.2f} s; "
                     f"{s.get('compiled_signatures', '?')} kernel signatures compiled)")
    s = raw["startup"]
    for first, warm, what in (("no cache", "warm cache", "with no Numba cache (every kernel compiled)"),
                              ("fresh install", "fresh install, second run",
                               "of a fresh install (pip-built wheel, its compiled kernels)")):
        if {first, warm} <= set(s):
            lines.append(f"  first run {what}: +{s[first]['process'] - s[warm]['process']:.2f} s over a warm one")
    if "fresh install" in s:
        lines.append(f"  (building that wheel took {s['fresh install']['wheel_build']:.1f} s, compiling the kernels "
                     "included)")
    if raw.get("throughput"):
        lines.append("")
        lines.append("throughput (minimaskrcnn, processes running at the same time):")
        for label, t in raw["throughput"].items():
            threads = sorted({p["num_threads"] for p in t["blas"]["pools"] if p.get("internal_api") == "openblas"})
            lines.append(f"  {label}: {t['images']} images in {t['seconds']:.2f} s = {t['images_per_s']:.3f} images/s"
                         f"  (peak RSS {' + '.join(f'{m:.0f}' for m in t['rss_mb'])} MB; OpenBLAS threads per "
                         f"process {threads})")
    return "\n".join(lines)


def _size_lines(r: dict) -> list:
    h, w = r["size"]
    peers = list(r["rss_mb"])                                               # in the bench's order
    fastest = min(r[k]["median"] for k in ([k for k in peers if k != MALLOPT_PEER] or peers))
    tv_rss = r["rss_mb"].get("torchvision")
    least_cpu = min(r[k].get("cpu", float("nan")) for k in peers)
    lines = [f"input {h}x{w}:", f"  {'peer':<20}{'latency':>9}{'/ fastest':>11}{'CPU s':>8}{'/ least':>9}"
             f"{'peak RSS':>10}{'/ tv':>7}{'detections':>12}"]
    for k in peers:
        rss, cpu = r["rss_mb"][k], r[k].get("cpu", float("nan"))
        rel = f"{rss / tv_rss:7.2f}" if tv_rss else f"{'-':>7}"
        lines.append(f"  {k:<20}{r[k]['median']:8.3f}s{r[k]['median'] / fastest:11.2f}{cpu:8.2f}{cpu / least_cpu:9.2f}"
                     f"{rss:8.0f}MB{rel}{r[k]['detections']:12d}")
    if "minimaskrcnn" in r:
        ours, tv = r["minimaskrcnn"]["stages"], r.get("torchvision", {}).get("stages", {})
        lines.append(f"  {'stage':<14}{'ours s':>9}{'tv s':>9}{'ratio':>8}")
        for stage, sa in ours.items():
            sb = tv.get(stage)
            lines.append(f"  {stage:<14}{sa:9.3f}" + (f"{sb:9.3f}{sa / sb:8.2f}" if sb else f"{'-':>9}{'-':>8}"))
    f = r.get("flops")
    if f:
        total, seconds = (sum(x[i] for x in f["kinds"].values()) for i in (0, 1))
        direct = total / (f["matmul_square_gflops"] * 1e9)
        e2e = r["minimaskrcnn"]["median"]
        m_, k_, n_ = f["matmul_shape"]
        lines.append(f"  direct-GEMM time: {total / 1e9:.0f} GFLOP (convolutions + fully connected, direct method) / "
                     f"{f['matmul_square_gflops']:.0f} GFLOP/s (float32 matmul 2048^3, same process) = {direct:.3f} s;"
                     f" end to end {e2e:.3f} s = {e2e / direct:.2f}x it")
        lines.append(f"  those layers ran in {seconds:.3f} s = {total / seconds / 1e9:.0f} GFLOP/s effective; matmul of "
                     f"the largest one's GEMM {m_}x{k_} @ {k_}x{n_}: {f['matmul_gflops']:.0f} GFLOP/s")
        lines.append("    " + ", ".join(f"{kind} {fl / 1e9:.1f} GFLOP in {t:.3f} s = {fl / t / 1e9:.0f} GFLOP/s"
                                        for kind, (fl, t) in sorted(f["kinds"].items())))
    for k, b in r["blas"].items():
        pools = "; ".join(f"{p.get('internal_api')} {p.get('version')} {p.get('architecture') or ''} "
                          f"x{p.get('num_threads')}".replace("  ", " ") for p in b["pools"])
        lines.append(f"  {k} thread pools ({b['source']}): {pools or 'none found'}"
                     + (f"; {b['own']}" if b.get("own") else ""))
    lines.append("")
    return lines
