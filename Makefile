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

bench: $(STAMP)
	$(BIN)/blockserve bench --arch bert-base-uncased --keep-heads 0.5 --keep-ffn 0.33 --seq 384 --batch 1 \
		--runtime torch onnx --repeats 15 --json artifacts/bench-bert-base.jsonl --plot artifacts/bench-bert-base.png
	$(BIN)/blockserve bench --arch bart-base --keep-heads 0.5 --keep-ffn 0.33 --seq 512 --batch 1 \
		--new-tokens 32 --repeats 5 --json artifacts/bench-bart-base.jsonl --plot artifacts/bench-bart-base.png

lint: $(STAMP)
	$(BIN)/ruff check pruning service loadtests tests
	$(BIN)/ruff format --check pruning service loadtests tests

clean:
	rm -rf $(VENV) artifacts .pytest_cache
