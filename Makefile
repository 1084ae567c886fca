# Every target that runs code depends on the virtualenv, so each works as the first command on a
# fresh machine. The stamp is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,dev

.PHONY: install test test-fast demo bench lint clean

install: $(STAMP)

# torch goes first and pinned: this exact version is the CPU wheel on disk here; anything looser
# would download the CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

demo: $(STAMP)
	$(BIN)/blockserve demo

# The measurements quoted in BENCHMARKS.md (about 10 minutes on 2 CPU cores); results are committed.
BENCH_OUT := benchmarks
BENCH := $(BIN)/blockserve bench --keep-heads 0.5 --keep-ffn 0.33
bench: $(STAMP)
	mkdir -p $(BENCH_OUT)
	$(BENCH) --arch bert-base-uncased --seq 384 --batch 1 --runtime torch onnx --repeats 20 \
		--json $(BENCH_OUT)/bert-base-acceptance.jsonl --plot $(BENCH_OUT)/bert-base-acceptance.png
	$(BENCH) --arch bert-base-uncased --seq 128 384 --batch 1 8 --runtime torch onnx --repeats 8 \
		--json $(BENCH_OUT)/bert-base-grid.jsonl --plot $(BENCH_OUT)/bert-base-grid.png
	$(BENCH) --arch bert-large-uncased --seq 384 --batch 1 --runtime torch onnx --repeats 8 \
		--json $(BENCH_OUT)/bert-large.jsonl --plot $(BENCH_OUT)/bert-large.png
	$(BENCH) --arch bart-base --seq 512 --batch 1 --new-tokens 32 --repeats 8 \
		--json $(BENCH_OUT)/bart-base.jsonl --plot $(BENCH_OUT)/bart-base.png
	$(BENCH) --arch bart-large --seq 512 --batch 1 --new-tokens 32 --repeats 4 \
		--json $(BENCH_OUT)/bart-large.jsonl --plot $(BENCH_OUT)/bart-large.png

lint: $(STAMP)
	$(BIN)/ruff check pruning service loadtests tests
	$(BIN)/ruff format --check pruning service loadtests tests

clean:
	rm -rf $(VENV) artifacts .pytest_cache
