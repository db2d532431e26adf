"""Large models (CI-sized): external weights stay on disk through planning, the output's external
data is written once and fresh, the output runs in ORT with the input's outputs, and a model whose
weights exceed protobuf's 2 GiB limit is planned from a sparse file without reading it.

Each check runs the pipeline in a child process and reads that process's own counters: the bytes
it read and wrote (/proc/self/io: rchar/wchar count page-cache hits and in-kernel copies too), its
peak RSS (VmHWM: ru_maxrss would also count the parent's pages at the fork before exec), and every
Python-level open of the weights file (audit hook).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import synthetic as syn  # noqa: E402

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")

MIB = 1 << 20
# 2 layers of d=1024 (48 MiB each) + 40 MiB of tables: 136 MiB of external weights
BIG = dict(weight_gib=0.125, d_model=1024, heads=8, vocab=4096, max_positions=2048)

HARNESS = r"""
import json, os, sys
sys.path.insert(0, {root!r})
import numpy, onnx, onnxruntime, sympy, click  # imported first: their own file reads are not the model's
from onnxruntime.tools import symbolic_shape_infer  # noqa: F401
from onnx import version_converter  # noqa: F401
from autochunk_onnx import api

DATA = os.path.realpath({data!r})
opens = []

def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        try:
            same = os.path.realpath(os.fsdecode(args[0])) == DATA
        except Exception:
            return
        if same:
            mode, flags = args[1], args[2]
            reads = (mode is not None and ("r" in mode or "+" in mode)) or (
                mode is None and (flags & os.O_ACCMODE) in (os.O_RDONLY, os.O_RDWR))
            f, stack = sys._getframe(1), []
            while f is not None:
                stack.append(os.path.basename(f.f_code.co_filename) + ":" + f.f_code.co_name)
                f = f.f_back
            opens.append({{"reads": reads, "stack": stack}})

def io():
    with open("/proc/self/io") as f:
        return {{k: int(v) for k, v in (l.split(": ") for l in f.read().splitlines() if l)}}

def status_mib(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024

marks = {{}}
def say(msg):
    marks[msg] = io()

sys.addaudithook(hook)
start_rss, start = status_mib("VmRSS"), io()
res = api.optimize({src!r}, {out!r}, {budget!r}, {shapes!r}, verify_output={verify!r},
                   best_effort=True, progress=say)
end = io()
print(json.dumps({{"start": start, "marks": marks, "end": end, "start_rss_mib": start_rss,
                  "peak_rss_mib": status_mib("VmHWM"),
                  "regions": len(res.plan.regions), "written": [str(w) for w in res.written], "opens": opens}}))
"""


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    src = folder / "big.onnx"
    data = Path(syn.big_transformer(src, **BIG))
    return src, data


def run_harness(src: Path, out: Path, *, budget: str, seq: int, verify: bool) -> dict:
    code = HARNESS.format(root=str(ROOT), data=str(src.with_name(src.name + ".data")), src=str(src), out=str(out),
                          budget=budget, shapes={"input_ids": [1, seq]}, verify=verify)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def external(path: Path) -> dict[str, tuple[Path, int, int]]:
    m = onnx.load(str(path), load_external_data=False)
    res = {}
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            res[t.name] = (path.parent / info["location"], int(info.get("offset", 0)), int(info["length"]))
    return res


def assert_same_weights(src: Path, out: Path) -> None:
    """Every external tensor of out holds, byte for byte, the same-named tensor of src."""
    a, b = external(src), external(out)
    assert set(a) == set(b) and a
    for name, (fa, oa, la) in a.items():
        fb, ob, lb = b[name]
        assert fb.name == out.name + ".data" and la == lb, name
        with open(fa, "rb") as x, open(fb, "rb") as y:
            assert os.pread(x.fileno(), la, oa) == os.pread(y.fileno(), lb, ob), name


def run_both(src: Path, out: Path, seq: int) -> None:
    ids = np.random.default_rng(0).integers(0, BIG["vocab"], (1, seq)).astype(np.int64)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no fusion: compare the graphs
    ref = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    got = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_optimize_leaves_weights_on_disk(big, tmp_path):
    src, data = big
    weights = data.stat().st_size
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "c.onnx"
    r = run_harness(src, out, budget="20%", seq=2048, verify=False)
    assert r["regions"] >= 1, "nothing was chunked: the test model lost its activation peak"

    # planning (load, shape inference, estimate, search) reads no weights: a few MiB of model proto at most
    planned = r["marks"]["rewriting into Loops"]
    read_planning = planned["rchar"] - r["start"]["rchar"]
    assert read_planning < 8 * MIB, f"planning read {read_planning / MIB:.1f} MiB (weights {weights / MIB:.0f} MiB)"
    # the only Python opens of the weights file are the streaming copy in save.py
    readers = [o["stack"] for o in r["opens"] if o["reads"]]
    assert readers and all(any(s.startswith("save.py:") for s in st) for st in readers), readers
    # writing reads and writes the weights once, never through Python memory
    read_all = r["end"]["rchar"] - r["start"]["rchar"]
    wrote = r["end"]["wchar"] - planned["wchar"]
    assert weights <= read_all < 1.2 * weights + 8 * MIB, (read_all, weights)
    assert weights <= wrote < 1.1 * weights + 4 * MIB, (wrote, weights)
    grown = r["peak_rss_mib"] - r["start_rss_mib"]
    assert grown < 0.3 * weights / MIB, f"RSS grew {grown:.0f} MiB over {r['start_rss_mib']:.0f} (weights {weights / MIB:.0f} MiB)"

    # output: exactly the two files, the data fresh (own inode), complete, and the model valid by path
    assert sorted(p.name for p in out_dir.iterdir()) == ["c.onnx", "c.onnx.data"]
    out_data = out_dir / "c.onnx.data"
    assert not os.path.samefile(out_data, data) and out_data.stat().st_nlink == 1
    assert_same_weights(src, out)
    onnx.checker.check_model(str(out), full_check=True)
    assert any(n.op_type == "Loop" for n in onnx.load(str(out), load_external_data=False).graph.node)
    run_both(src, out, seq=64)


def test_verified_output_written_once(big, tmp_path):
    """With verification the model is staged next to OUTPUT and renamed: weights written once."""
    src, data = big
    weights = data.stat().st_size
    out = tmp_path / "v.onnx"
    r = run_harness(src, out, budget="50%", seq=512, verify=True)
    assert r["regions"] >= 1
    wrote = r["end"]["wchar"] - r["marks"]["rewriting into Loops"]["wchar"]
    assert weights <= wrote < 1.1 * weights + 8 * MIB, f"wrote {wrote / MIB:.0f} MiB for {weights / MIB:.0f} MiB of weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.onnx", "v.onnx.data"]  # staging folder gone
    assert_same_weights(src, out)
    run_both(src, out, seq=37)


def test_over_2gib_planned_without_reading(tmp_path):
    """A token table of 2.25 GiB in a sparse file: estimate and optimize --dry-run never read it
    and never serialize the model with its weights (protobuf's limit is 2 GiB)."""
    m = syn.transformer(layers=1, d_model=64, heads=4, vocab=512)
    rows = (9 << 28) // (64 * 4)  # 2.25 GiB of float32 rows of 64
    src = tmp_path / "huge.onnx"
    data = tmp_path / "huge.onnx.data"
    with open(data, "wb") as f:
        f.truncate(rows * 64 * 4)  # sparse: no disk used
    t = next(t for t in m.graph.initializer if t.name == "embed_tokens.weight")
    t.Clear()
    t.name, t.data_type = "embed_tokens.weight", TensorProto.FLOAT
    t.dims.extend([rows, 64])
    for k, v in (("location", data.name), ("offset", "0"), ("length", str(rows * 64 * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    t.data_location = TensorProto.EXTERNAL
    onnx.save(m, str(src))
    wrapper = ("import json, sys\n"
               f"sys.path.insert(0, {str(ROOT)!r})\n"
               "from autochunk_onnx.cli.main import main\n"
               "try:\n"
               "    main(sys.argv[1:], standalone_mode=False)\n"
               "finally:\n"
               "    hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
               "    print(json.dumps({'hwm_mib': hwm / 1024}), file=sys.stderr)\n")
    for args in (["estimate", str(src), "-s", "input_ids:1x2048", "--json"],
                 ["optimize", str(src), str(tmp_path / "o.onnx"), "-s", "input_ids:1x2048", "-b", "20%", "--dry-run"]):
        r = subprocess.run([sys.executable, "-c", wrapper] + args, capture_output=True, text=True, cwd=str(ROOT),
                           timeout=120)
        assert r.returncode == 0, r.stderr
        peak = json.loads(r.stderr.strip().splitlines()[-1])["hwm_mib"]
        assert peak < 300, f"{args[0]}: peak RSS {peak:.0f} MiB"
        if args[0] == "estimate":
            assert json.loads(r.stdout)["estimate"]["weight_bytes"] >= 9 << 28
    assert not (tmp_path / "o.onnx").exists()
