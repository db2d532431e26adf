"""Output, --report and --plot paths that are not ours to replace exit 2 before any work.

Run as root in CI containers too, where a rename onto /dev/null or /dev/stdout would succeed and
destroy them: each special kind is made here (FIFO, socket, folder, symlinks) and checked untouched.
"""
from __future__ import annotations

import os
import socket
import stat
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autochunk_onnx.errors import BadInputError  # noqa: E402
from autochunk_onnx.paths import check_model_output, check_writable_file  # noqa: E402
from cli.main import main  # noqa: E402
from models import synthetic as syn  # noqa: E402

SHAPE = "x:1x256x32"


@pytest.fixture
def src(tmp_path) -> Path:
    p = tmp_path / "in" / "ab.onnx"
    p.parent.mkdir()
    onnx.save(syn.attention_block(d_model=32, heads=2), str(p))
    return p


@pytest.fixture
def specials(tmp_path) -> dict[str, Path]:
    """One of each kind of path that must never be replaced, in a folder of its own."""
    d = tmp_path / "specials"
    d.mkdir()
    os.mkfifo(d / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    s.close()
    (d / "dir").mkdir()
    (d / "linkdir").symlink_to(d / "dir")
    (d / "linknull").symlink_to("/dev/null")
    (d / "linkfifo").symlink_to(d / "fifo")
    (d / "dangling").symlink_to(d / "nowhere")
    return {p.name: p for p in d.iterdir()}


def _state(p: Path) -> tuple:
    st = os.lstat(p)
    return (stat.S_IFMT(st.st_mode), st.st_ino, os.readlink(p) if p.is_symlink() else None)


BAD = ["/dev/null", "/dev/stdout", "-", "fifo", "sock", "dir", "linkdir", "linknull", "linkfifo", "dangling"]


def _resolve(name: str, specials: dict[str, Path]) -> str:
    return str(specials[name]) if name in specials else name


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    # click refuses a folder itself, with its usage lines; everything else is our one line
    return lines[-1]


@pytest.mark.parametrize("name", BAD)
def test_bad_output_exits_2_before_work(name, src, specials, tmp_path, monkeypatch):
    target = _resolve(name, specials)
    before = {k: _state(p) for k, p in specials.items()}
    dev = {p: _state(Path(p)) for p in ("/dev/null", "/dev/stdout")}
    monkeypatch.chdir(tmp_path)
    called = []
    monkeypatch.setattr("autochunk_onnx.api.load", lambda *a, **k: called.append(1))  # no work may start
    r = CliRunner().invoke(main, ["optimize", str(src), target, "-b", "50%", "-s", SHAPE, "--no-verify"],
                           catch_exceptions=False)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    line = _one_error_line(r.stderr)
    assert "error" in line.lower()
    assert not called, "work started before the output path was refused"
    assert {k: _state(p) for k, p in specials.items()} == before
    assert {p: _state(Path(p)) for p in dev} == dev
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("flag", ["--report", "--plot"])
@pytest.mark.parametrize("name", ["/dev/null", "/dev/stdout", "-", "fifo", "sock", "dir", "linkdir", "linknull"])
def test_bad_report_and_plot_paths_exit_2_before_work(flag, name, src, specials, tmp_path, monkeypatch):
    target = _resolve(name, specials)
    before = {k: _state(p) for k, p in specials.items()}
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "o.onnx"
    if flag == "--report":
        args = ["optimize", str(src), str(out), "-b", "50%", "-s", SHAPE, "--no-verify", "--report", target]
    else:
        args = ["estimate", str(src), "-s", SHAPE, "--plot", target]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "error" in _one_error_line(r.stderr).lower()
    assert not out.exists(), "the model was written although the report path is bad"
    assert {k: _state(p) for k, p in specials.items()} == before


def test_regular_file_and_symlink_to_one_are_accepted(tmp_path, src):
    f = tmp_path / "old.onnx"
    f.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(f)
    assert check_writable_file(f) == f
    assert check_model_output(src, link) == link
    assert check_writable_file(tmp_path / "new" / "deeper" / "x.onnx").name == "x.onnx"


def test_data_file_and_keep_failed_paths_are_checked(tmp_path, src):
    out = tmp_path / "o.onnx"
    os.mkfifo(tmp_path / "o.onnx.data")
    with pytest.raises(BadInputError, match="data file"):
        check_model_output(src, out)
    os.unlink(tmp_path / "o.onnx.data")
    (tmp_path / "o.onnx.failed.onnx").mkdir()
    check_model_output(src, out)  # --keep-failed not asked: its path does not matter
    with pytest.raises(BadInputError, match="keep-failed"):
        check_model_output(src, out, keep_failed=True)
