# Every target creates the virtual environment when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.14.1 torchvision==0.29.1

# Dataset preparation (make masks DATASET=sintel ROOT=/data/Sintel OUT=/data/masks CHECKPOINT=sam_vit_h.pth)
DATASET    ?= folder
ROOT       ?=
OUT        ?= masks_out
CHECKPOINT ?=
SHARDS     ?= 8
WORKERS    ?=
DEMO_OUT   ?= demo_out

.PHONY: venv test demo lint bench masks clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m pipeline demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

masks: $(STAMP)
	@test -n "$(ROOT)" || (echo "usage: make masks DATASET=sintel ROOT=/path/to/dataset OUT=dir [CHECKPOINT=sam.pth] [SHARDS=8] [WORKERS=N]"; exit 2)
	$(BIN)/python -m pipeline run --layout $(DATASET) --root $(ROOT) --out $(OUT) --shards $(SHARDS) \
		$(if $(CHECKPOINT),--segmenter sam --checkpoint $(CHECKPOINT),) $(if $(WORKERS),--workers $(WORKERS),)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
