"""Fit the speed cost model's constants (autochunk_onnx/costmodel.py) on this machine's ORT.

    python -m bench.calibrate [--repeats 7]

Four micro-benchmarks, each timed in ORT (median of interleaved runs):
  1. a large fp32 GEMM                         -> FLOP_RATE
  2. a chain of elementwise Adds on big tensors -> MEM_RATE (bytes read + written per second)
  3. Loops of 1..64 iterations whose body is K cheap nodes on tiny tensors
     -> ITER_S (per iteration) and NODE_S (per node per iteration), by least squares
  4. GEMMs [m, 256] x [256, 256] for m = 1..1024 -> GEMM_M0 in efficiency(m) = m / (m + M0)
It prints the fitted constants next to the ones in costmodel.py; paste them there (with the
date and the machine) when they differ. Only ratios between plans matter for selection, so
the machine's absolute speed matters less than the relations between the four.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx import costmodel

F = TensorProto.FLOAT
OPSET = [helper.make_opsetid("", 17)]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    model.ir_version = 8  # what every ORT since 1.14 reads
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _time(cases: list[tuple[ort.InferenceSession, dict]], repeats: int) -> list[float]:
    """Median seconds per case, runs interleaved across cases so drift hits all alike."""
    for s, f in cases:
        s.run(None, f)  # warm-up
    times: list[list[float]] = [[] for _ in cases]
    for _ in range(repeats):
        for k, (s, f) in enumerate(cases):
            t = time.perf_counter()
            s.run(None, f)
            times[k].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def _gemm_model(m: int, k: int, n: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n), dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", F, [m, k])], [helper.make_tensor_value_info("y", F, [m, n])],
                          initializer=[w])
    return helper.make_model(g, opset_imports=OPSET)


def flop_rate(repeats: int) -> float:
    m = k = n = 1024
    s = _session(_gemm_model(m, k, n))
    (t,) = _time([(s, {"x": np.ones((m, k), np.float32)})], repeats)
    return 2.0 * m * k * n / t


def mem_rate(repeats: int) -> float:
    shape, chain = [4, 1024, 1024], 8
    nodes, prev = [], "x"
    for i in range(chain):
        out = f"a{i}"
        nodes.append(helper.make_node("Add", [prev, "x"], [out]))
        prev = out
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, shape)], [helper.make_tensor_value_info(prev, F, shape)])
    s = _session(helper.make_model(g, opset_imports=OPSET))
    (t,) = _time([(s, {"x": np.ones(shape, np.float32)})], repeats)
    nbytes = int(np.prod(shape)) * 4
    return chain * 3 * nbytes / t  # each Add reads two tensors and writes one


def _loop_model(iters: int, body_nodes: int) -> onnx.ModelProto:
    """A Loop of `iters` iterations whose body runs `body_nodes` Adds on a [1, 16] tensor."""
    body, prev = [], "x"
    for i in range(body_nodes):
        out = f"b{i}"
        body.append(helper.make_node("Add", [prev, "x"], [out]))
        prev = out
    body.append(helper.make_node("Identity", ["cond"], ["cond_out"]))
    body.append(helper.make_node("Identity", [prev], ["y_out"]))
    bg = helper.make_graph(body, "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                          helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                           [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                            helper.make_tensor_value_info("y_out", F, [1, 16])])
    trip = numpy_helper.from_array(np.array(iters, np.int64), "trip")
    g = helper.make_graph([helper.make_node("Loop", ["trip", ""], ["ys"], body=bg)], "g",
                          [helper.make_tensor_value_info("x", F, [1, 16])],
                          [helper.make_tensor_value_info("ys", F, [iters, 1, 16])], initializer=[trip])
    return helper.make_model(g, opset_imports=OPSET)


def loop_overhead(repeats: int) -> tuple[float, float]:
    """(ITER_S, NODE_S) by least squares over t = a + iters * (ITER_S + NODE_S * nodes)."""
    grid = [(it, k) for it in (1, 8, 32, 64) for k in (1, 8, 32)]
    feeds = {"x": np.ones((1, 16), np.float32)}
    times = _time([(_session(_loop_model(it, k)), feeds) for it, k in grid], repeats)
    t = np.array(times)
    a = np.array([[1.0, it, it * k] for it, k in grid]) / t[:, None]  # relative error: small cases count
    coef, *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    return float(max(coef[1], 0.0)), float(max(coef[2], 0.0))


def gemm_m0(repeats: int) -> tuple[float, list[tuple[int, float]]]:
    """M0 of efficiency(m) = m / (m + M0), fitted on [m, 256] x [256, 256] GEMMs (throughput
    relative to the largest m of the same family)."""
    k = n = 256
    ms = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    cases = [(_session(_gemm_model(m, k, n)), {"x": np.ones((m, k), np.float32)}) for m in ms]
    times = _time(cases, repeats)
    rates = [2.0 * m * k * n / t for m, t in zip(ms, times)]
    eff = [(m, r / max(rates)) for m, r in zip(ms, rates)]
    # efficiency relative to the largest m: e(m)/e(M) = m (M + M0) / (M (m + M0)); grid-search M0
    big_m, big_e = eff[-1]
    best, best_err = 0.0, float("inf")
    for m0 in np.geomspace(0.1, 512, 400):
        err = sum((np.log(e / big_e) - np.log((m * (big_m + m0)) / (big_m * (m + m0)))) ** 2 for m, e in eff)
        if err < best_err:
            best, best_err = float(m0), err
    return best, eff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    fr = flop_rate(args.repeats)
    mr = mem_rate(args.repeats)
    it_s, node_s = loop_overhead(args.repeats)
    m0, eff = gemm_m0(args.repeats)
    print(f"ORT {ort.__version__}, CPUExecutionProvider, {args.repeats} interleaved repeats (median)")
    print(f"{'constant':10} {'fitted':>12} {'costmodel.py':>14}")
    for name, val in (("FLOP_RATE", fr), ("MEM_RATE", mr), ("ITER_S", it_s), ("NODE_S", node_s), ("GEMM_M0", m0)):
        print(f"{name:10} {val:12.4g} {getattr(costmodel, name):14.4g}")
    print("GEMM throughput by rows m (relative to the best m):", ", ".join(f"{m}:{e:.2f}" for m, e in eff))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
