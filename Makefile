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

# The main job end to end on an embedded default: generated synthetic scenes with exact ground truth.
demo: $(STAMP)
	$(BIN)/python -m unsamflow.pipeline synth --out $(DEMO_OUT)/data --sequences 4 --frames 3 --size 256x320 \
		--seed 0 --difficulty easy
	$(BIN)/python -m unsamflow.pipeline run --manifest $(DEMO_OUT)/data/manifest.json --out $(DEMO_OUT)/masks \
		--shards 4 --workers 2 --pictures 4 --key-min-h 24 --key-min-w 24 --key-min-overlaps 3
	$(BIN)/python -m unsamflow.pipeline show-flow --layout synthetic --root $(DEMO_OUT)/data --pair 0 \
		--out $(DEMO_OUT)/pictures/flow_pair0.png
	$(BIN)/python -m unsamflow.trainer refine --flow $(DEMO_OUT)/data/training/flow/seq_000/frame_0001.flo \
		--store $(DEMO_OUT)/masks/stores --frame training/clean/seq_000/frame_0001.png \
		--out $(DEMO_OUT)/refine/frame_0001.flo --picture $(DEMO_OUT)/pictures/refine_frame_0001.png
	@echo
	@echo "demo done:"
	@echo "  frames + exact flow:  $(DEMO_OUT)/data (manifest.json)"
	@echo "  mask stores:          $(DEMO_OUT)/masks/stores (verified)"
	@echo "  mask pictures:        $(DEMO_OUT)/masks/pictures"
	@echo "  flow picture:         $(DEMO_OUT)/pictures/flow_pair0.png"
	@echo "  per-object homography refinement of the GT flow: $(DEMO_OUT)/pictures/refine_frame_0001.png"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

masks: $(STAMP)
	@test -n "$(ROOT)" || (echo "usage: make masks DATASET=sintel ROOT=/path/to/dataset OUT=dir [CHECKPOINT=sam.pth] [SHARDS=8] [WORKERS=N]"; exit 2)
	$(BIN)/python -m unsamflow.pipeline run --layout $(DATASET) --root $(ROOT) --out $(OUT) --shards $(SHARDS) \
		$(if $(CHECKPOINT),--segmenter sam --checkpoint $(CHECKPOINT),) $(if $(WORKERS),--workers $(WORKERS),)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
