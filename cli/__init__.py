"""The `autochunk-onnx` command line, installed as `autochunk_onnx.cli` (see pyproject.toml)."""
