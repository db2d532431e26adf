# autochunk-onnx: `make demo` (optimize the shipped example), `make test` (the suite CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test models bench bench-quick bench-large fuzz check-memory clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	mkdir -p demo-out
	$(BIN)/autochunk-onnx optimize models/examples/gpt_small.onnx demo-out/gpt_small.chunked.onnx \
		--budget 20% --input-shape input_ids:1x4096

test: $(STAMP)
	$(BIN)/python -m pytest tests

# Regression gate (README "Use in CI"): optimize, verify, and fail (exit 5) when the measured
# memory ratio or the interleaved latency ratio goes over its limit; the JSON report is kept.
CHECK_MODEL ?= models/examples/gpt_small.onnx
CHECK_SHAPE ?= input_ids:1x2048
CHECK_BUDGET ?= 20%
CHECK_OUT ?= demo-out
CHECK_ITERATIONS ?= 10
MAX_MEM_RATIO ?= 0.25
MAX_LATENCY_RATIO ?= 1.5
check-memory: $(STAMP)
	mkdir -p $(CHECK_OUT)
	$(BIN)/autochunk-onnx optimize $(CHECK_MODEL) $(CHECK_OUT)/check.chunked.onnx --budget $(CHECK_BUDGET) \
		--input-shape $(CHECK_SHAPE) --iterations $(CHECK_ITERATIONS) \
		--max-mem-ratio $(MAX_MEM_RATIO) --max-latency-ratio $(MAX_LATENCY_RATIO) \
		--report $(CHECK_OUT)/check-memory.json -q

# Real architectures exported with torch (generation-time tools in their own venv).
models:
	$(PY) -m venv .venv-models
	.venv-models/bin/pip install -q -r models/requirements.txt
	.venv-models/bin/pip install -q --no-deps openfold3
	.venv-models/bin/python -m models.export --family all --out models/out --size bench
	.venv-models/bin/python -m models.export --family bert --size base --attn eager --exporter torchscript --out models/out
	.venv-models/bin/python -m models.fuse --size bench --src models/out --out models/out --report models/out/fused.json

bench: $(STAMP)
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick

# Differential fuzzing: 1,000 random graphs at random budgets, original vs chunked in ORT.
fuzz: $(STAMP)
	$(BIN)/python -m bench.fuzz --seeds 0-999

# A GPT-like model with GIB GiB of external weights (temp folder): estimate and optimize
# --no-verify time and peak RSS against the targets, output checked by path and run in ORT.
GIB ?= 1.0
bench-large: $(STAMP)
	$(BIN)/python -m bench.large --gib $(GIB) --run

clean:
	rm -rf demo-out .pytest_cache
