"""measure(): the peak figure matches what can be computed by hand, repeats agree, errors are one line."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from autochunk_onnx.errors import AutochunkError, BadInputError
from autochunk_onnx.measure import Measurement, measure

MiB = 2**20
D = 64


def _matmul_chain(path: str, length: int) -> str:
    """x[1,L,64] @ w1[64,L] -> h[1,L,L] -> h @ w2[L,64] -> y[1,L,64].

    Live during the run (x is fed and allocated before): h (L*L*4 bytes) and y (L*64*4), so the
    peak activation memory is exactly L*L*4 + L*64*4 bytes.
    """
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((D, length)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((length, D)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "L", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "L", D])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def _expected(length: int) -> int:
    return length * length * 4 + length * D * 4


def _feeds(length: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((1, length, D)).astype(np.float32)}


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> str:
    return _matmul_chain(str(tmp_path_factory.mktemp("m") / "chain4096.onnx"), 4096)


def test_peak_64mib_matches_hand_count_and_repeats_agree(big: str) -> None:
    first = measure(big, _feeds(4096), repeats=2)
    second = measure(big, _feeds(4096), repeats=2)
    expected = _expected(4096)
    print(f"\n64 MiB chain: expected {expected / MiB:.2f} MiB, measured {first.peak_bytes / MiB:.2f} "
          f"and {second.peak_bytes / MiB:.2f} MiB; latency {first.latency_s * 1e3:.1f} ms")
    assert isinstance(first, Measurement)
    assert first.method == "cpu-rss-hwm"
    assert abs(first.peak_bytes - expected) <= 0.15 * expected
    assert abs(first.peak_bytes - second.peak_bytes) <= 2 * MiB
    assert first.latency_s > 0 and len(first.latencies_s) == 2
    assert first.providers == ["CPUExecutionProvider"]  # onnxruntime-gpu falls back: no GPU here
    assert first.outputs_path is None


def test_peak_4mib_and_outputs_kept(tmp_path) -> None:
    path = _matmul_chain(str(tmp_path / "chain1024.onnx"), 1024)
    feeds = _feeds(1024)
    m = measure(path, feeds, providers=["CPUExecutionProvider"], repeats=1, keep_outputs=True)
    expected = _expected(1024)
    print(f"\n4 MiB chain: expected {expected / MiB:.2f} MiB, measured {m.peak_bytes / MiB:.2f} MiB")
    # small tensors: allow 1 MiB of slack for malloc bookkeeping and thread stacks
    assert abs(m.peak_bytes - expected) <= max(0.15 * expected, 1 * MiB)
    assert m.providers == ["CPUExecutionProvider"]
    try:
        with np.load(m.outputs_path) as out:
            assert list(out.files) == ["y"]
            w = onnx.load(path).graph.initializer
            w1, w2 = (numpy_helper.to_array(t) for t in w)
            np.testing.assert_allclose(out["y"], feeds["x"] @ w1 @ w2, rtol=1e-3, atol=1e-2)
    finally:
        os.unlink(m.outputs_path)


def test_custom_domain_op_is_bad_input(tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 9
    path = str(tmp_path / "custom.onnx")
    onnx.save(model, path)
    with pytest.raises(BadInputError) as info:
        measure(path, {"x": np.ones(2, np.float32)}, providers=["CPUExecutionProvider"])
    msg = str(info.value)
    print("\n" + msg)
    assert "\n" not in msg and "Traceback" not in msg
    assert "FancyOp" in msg


def test_invalid_model_file_and_bad_feeds(tmp_path, big: str) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(BadInputError):
        measure(str(junk), {}, providers=["CPUExecutionProvider"])
    with pytest.raises(BadInputError):
        measure(str(tmp_path / "absent.onnx"), {})
    with pytest.raises(BadInputError) as info:  # wrong rank: ORT rejects it at run
        measure(big, {"x": np.ones((4, 4), np.float32)}, providers=["CPUExecutionProvider"])
    assert "\n" not in str(info.value)


def test_timeout_is_autochunk_error(big: str) -> None:
    with pytest.raises(AutochunkError) as info:
        measure(big, _feeds(4096), providers=["CPUExecutionProvider"], timeout_s=0.01)
    assert not isinstance(info.value, BadInputError)
    assert "past" in str(info.value)


def test_death_messages() -> None:
    from autochunk_onnx.measure import _death_message

    assert "out of memory" in _death_message("m.onnx", -9, b"")
    assert "SIGSEGV" in _death_message("m.onnx", -11, b"")
    assert "boom" in _death_message("m.onnx", 1, b"Traceback...\nRuntimeError: boom\n")
