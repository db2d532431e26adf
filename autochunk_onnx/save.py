"""Write a model atomically, with its external weights copied once, fresh, next to it.

The input model's weights were never loaded: each external tensor is copied byte range by byte
range from the source folder into `<output>.data`, so RSS stays small for multi-GB models.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

COPY_BLOCK = 64 << 20
ALIGN = 4096


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _external(model: onnx.ModelProto):
    return [t for t in onnx.external_data_helper._get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


def save_model(model: onnx.ModelProto, out_path: str | os.PathLike, src_dir: str | os.PathLike) -> list[Path]:
    """Write `model` to `out_path` (temp file + rename); returns the files written."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # locations are rewritten below; the caller's model stays as it was
    model = copy
    out = Path(out_path)
    folder = out.parent if str(out.parent) else Path(".")
    ext = _external(model)
    written = []
    data_tmp = None
    if ext:
        data_name = out.name + ".data"
        fd, data_tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".data", dir=folder)
        with os.fdopen(fd, "wb") as dst:
            pos = 0
            for t in ext:
                info = {e.key: e.value for e in t.external_data}
                src = Path(src_dir) / info["location"]
                offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
                if pos % ALIGN:
                    dst.write(b"\0" * (ALIGN - pos % ALIGN))
                    pos += ALIGN - pos % ALIGN
                start = pos
                with open(src, "rb") as f:
                    f.seek(offset)
                    remaining = length if length is not None else os.path.getsize(src) - offset
                    while remaining > 0:
                        buf = f.read(min(COPY_BLOCK, remaining))
                        if not buf:
                            break
                        dst.write(buf)
                        remaining -= len(buf)
                        pos += len(buf)
                del t.external_data[:]
                for k, v in (("location", data_name), ("offset", str(start)), ("length", str(pos - start))):
                    e = t.external_data.add()
                    e.key, e.value = k, v
    fd, model_tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString(deterministic=True))
        os.chmod(model_tmp, _umask_mode())
        if data_tmp:
            os.chmod(data_tmp, _umask_mode())
            os.replace(data_tmp, folder / (out.name + ".data"))
            written.append(folder / (out.name + ".data"))
        os.replace(model_tmp, out)
        written.insert(0, out)
    except BaseException:
        for p in (model_tmp, data_tmp):
            if p and os.path.exists(p):
                os.unlink(p)
        raise
    return written
