"""`python -m autochunk_onnx ...` is the `autochunk-onnx` command."""
from .cli.main import main

if __name__ == "__main__":
    main(prog_name="autochunk-onnx")
