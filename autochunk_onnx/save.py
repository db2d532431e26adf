"""Write a model atomically, with its external weights copied once, fresh, next to it.

The input model's weights were never loaded: each external tensor is copied byte range by byte
range from the source folder into `<output>.data`, inside the kernel where it can
(`os.copy_file_range`, else `os.sendfile`, else a small reused buffer), so RSS stays flat for
multi-GB models. The model proto itself is never copied: its external-data entries are pointed at
the new file while it is serialized, then put back.

`stage` + `publish` write the files into a hidden folder next to the output (so the model can be
verified where it will live, under its final name) and then move them into place by rename: the
weights are written once whether or not the model is verified.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

COPY_BLOCK = 8 << 20  # bytes per kernel copy call, and the size of the fallback buffer
ALIGN = 4096


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _external(model: onnx.ModelProto):
    return [t for t in onnx.external_data_helper._get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int | None) -> int:
    """Append `length` bytes (None: to the end) of src from `offset` to dst; returns bytes copied."""
    if length is None:
        length = max(0, os.fstat(src_fd).st_size - offset)
    done = 0
    kernel = [f for f in (getattr(os, "copy_file_range", None), getattr(os, "sendfile", None)) if f]
    while done < length:
        n = min(COPY_BLOCK, length - done)
        k = 0
        while kernel:
            try:
                if kernel[0].__name__ == "copy_file_range":
                    k = os.copy_file_range(src_fd, dst_fd, n, offset + done)
                else:
                    k = os.sendfile(dst_fd, src_fd, offset + done, n)
                break
            except OSError:  # not supported between these files: next method
                kernel.pop(0)
        if not kernel:
            buf = os.pread(src_fd, n, offset + done)
            k = len(buf)
            view = memoryview(buf)
            while view:
                view = view[os.write(dst_fd, view):]
        if k == 0:
            break  # source shorter than declared (checked at load; a file changed since)
        done += k
    return done


def _write_data(ext, data_path: Path, data_name: str, src_dir: Path) -> list[tuple]:
    """Copy every external tensor into `data_path`; return the new (tensor, entries) per tensor."""
    new_entries = []
    fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pos = 0
        handles: dict[Path, int] = {}
        try:
            for t in ext:
                info = {e.key: e.value for e in t.external_data}
                src = src_dir / info["location"]
                if src not in handles:
                    handles[src] = os.open(src, os.O_RDONLY)
                if pos % ALIGN:
                    pad = ALIGN - pos % ALIGN
                    os.write(fd, b"\0" * pad)
                    pos += pad
                length = int(info["length"]) if "length" in info else None
                n = _copy_range(handles[src], fd, int(info.get("offset", 0)), length)
                new_entries.append((t, [("location", data_name), ("offset", str(pos)), ("length", str(n))]))
                pos += n
        finally:
            for h in handles.values():
                os.close(h)
    finally:
        os.close(fd)
    return new_entries


def _serialize_with(model: onnx.ModelProto, new_entries: list[tuple]) -> bytes:
    """Serialize `model` with the given external-data entries, then restore the old ones."""
    old = []
    try:
        for t, entries in new_entries:
            old.append((t, [(e.key, e.value) for e in t.external_data]))
            _set_entries(t, entries)
        return model.SerializeToString(deterministic=True)
    finally:
        for t, entries in old:
            _set_entries(t, entries)


def _set_entries(t: onnx.TensorProto, entries) -> None:
    del t.external_data[:]
    for k, v in entries:
        e = t.external_data.add()
        e.key, e.value = k, v


def save_model(model: onnx.ModelProto, out_path: str | os.PathLike, src_dir: str | os.PathLike) -> list[Path]:
    """Write `model` to `out_path` (temp file + rename); returns the files written.

    External tensors are read from `src_dir` (the input model's folder) and written to
    `<out_path>.data`; `model` is left as it was.
    """
    out = Path(out_path)
    folder = out.parent
    ext = _external(model)
    written = []
    data_tmp = None
    new_entries: list[tuple] = []
    try:
        if ext:
            fd, data_tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".data", dir=folder)
            os.close(fd)
            new_entries = _write_data(ext, Path(data_tmp), out.name + ".data", Path(src_dir))
        blob = _serialize_with(model, new_entries)
        fd, model_tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            del blob
            os.chmod(model_tmp, _umask_mode())
            if data_tmp:
                os.chmod(data_tmp, _umask_mode())
                os.replace(data_tmp, folder / (out.name + ".data"))
                data_tmp = None
                written.append(folder / (out.name + ".data"))
            os.replace(model_tmp, out)
            written.insert(0, out)
        except BaseException:
            if os.path.exists(model_tmp):
                os.unlink(model_tmp)
            raise
    finally:
        if data_tmp and os.path.exists(data_tmp):
            os.unlink(data_tmp)
    return written


def stage(model: onnx.ModelProto, out_path: str | os.PathLike, src_dir: str | os.PathLike) -> Path:
    """Write `model` under its final name into a new hidden folder next to `out_path`; returns
    the staged model's path (its external data, if any, lies next to it). Undo with `discard`."""
    out = Path(out_path)
    folder = out.parent
    box = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staged", dir=folder))
    try:
        save_model(model, box / out.name, src_dir)
    except BaseException:
        shutil.rmtree(box, ignore_errors=True)
        raise
    return box / out.name


def publish(staged: Path, out_path: str | os.PathLike) -> list[Path]:
    """Move a staged model (and its data) to `out_path` by rename; returns the files there."""
    out = Path(out_path)
    data = _move_data(staged, out)
    os.replace(staged, out)
    discard(staged)
    return [out] + data


def publish_as(staged: Path, out_path: str | os.PathLike) -> list[Path]:
    """Like publish, under another name (e.g. OUTPUT.failed.onnx): the small model file is
    rewritten to point at the renamed data; the data itself is only moved."""
    out = Path(out_path)
    if out.name == staged.name:
        return publish(staged, out)
    folder = out.parent
    model = onnx.load(str(staged), load_external_data=False)
    moved = []
    for t in _external(model):
        entries = [(e.key, out.name + ".data" if e.key == "location" else e.value) for e in t.external_data]
        moved.append((t, entries))
    blob = _serialize_with(model, moved)
    data = _move_data(staged, out)
    fd, model_tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=folder)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.chmod(model_tmp, _umask_mode())
    os.replace(model_tmp, out)
    discard(staged)
    return [out] + data


def _move_data(staged: Path, out: Path) -> list[Path]:
    """Rename the staged model's data file (if any) to OUT.data; returns the files moved there."""
    data = staged.with_name(staged.name + ".data")
    if not data.exists():
        return []
    dest = out.parent / (out.name + ".data")
    os.replace(data, dest)
    return [dest]


def discard(staged: Path) -> None:
    """Remove a staging folder and whatever is left in it."""
    shutil.rmtree(staged.parent, ignore_errors=True)
