# Every target creates the virtual environment when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The editable install as a link tree (setuptools' strict mode), not an import hook: mypy, pyright and IDEs
# resolve `unsamflow.*` through it. A link tree lists the files it had, so a module added later is linked
# by re-running the install: LINKED is remade whenever a package folder changed (a file added or removed).
EDITABLE_INSTALL := --config-settings editable_mode=strict
LINKED  := $(VENV)/.linked
PACKAGE_DIRS := pipeline trainer data_manifests $(wildcard pipeline/*/ trainer/*/ trainer/config/presets/)
TORCH   ?= torch==2.14.1 torchvision==0.29.1
# A machine without a GPU: make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu (no nvidia-* wheels)
TORCH_INDEX ?=

# Dataset preparation (make masks DATASET=sintel ROOT=/data/Sintel OUT=/data/masks CHECKPOINT=sam_vit_h.pth)
DATASET    ?= folder
ROOT       ?=
OUT        ?=
CHECKPOINT ?=
SHARDS     ?= 8
WORKERS    ?=
ALLOW_PARTIAL ?=
SEG_OPTS   ?=
UPDATE     ?=
DEMO_OUT   ?= demo_out
PRESET     ?=
DATA       ?=
MASKS      ?=
CKPT       ?=
EVAL_ROOT  ?=
EVAL_MASKS ?=
OVERRIDES  ?=

.PHONY: venv test demo lint bench scaling learning ablation masks train evaluate clean gpu-check gpu-wheels

venv: $(LINKED)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 'setuptools>=77' wheel
	$(BIN)/pip install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	# sam2 ships only a source archive whose build would fetch a second torch: build it against ours, no CUDA ext
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation 'sam2>=1.1'
	$(BIN)/pip install -q -e '.[dev]' $(EDITABLE_INSTALL)
	touch $(STAMP)

$(LINKED): $(STAMP) $(PACKAGE_DIRS)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . $(EDITABLE_INSTALL)
	touch $(LINKED)

# mypy checks the packages listed in pyproject.toml's [tool.mypy] (the ones that are clean so far)
test: $(LINKED)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# The main job end to end on an embedded default: synthetic scenes with exact ground truth -> masks on 2 local
# Dask workers -> a short CPU training run (cpu-demo: the full +aug +hg +mf recipe, shrunk) -> evaluation on
# held-out synthetic pairs and the real samples in tests/data -> a report with pictures.
demo: $(STAMP)
	$(BIN)/python -m unsamflow.pipeline synth --out $(DEMO_OUT)/data --sequences 6 --frames 4 --size 256x320 \
		--seed 0 --difficulty easy
	$(BIN)/python -m unsamflow.pipeline run --manifest $(DEMO_OUT)/data/manifest.json --out $(DEMO_OUT)/masks \
		--shards 4 --workers 2 --pictures 4 --key-min-h 24 --key-min-w 24 --key-min-overlaps 3
	$(BIN)/python -m unsamflow.pipeline synth --out $(DEMO_OUT)/heldout --sequences 2 --frames 3 --size 256x320 \
		--seed 1 --difficulty easy
	$(BIN)/python -m unsamflow.pipeline run --manifest $(DEMO_OUT)/heldout/manifest.json --out $(DEMO_OUT)/heldout_masks \
		--shards 2 --workers 2 --pictures 0 --key-min-h 24 --key-min-w 24 --key-min-overlaps 3
	$(BIN)/python -m unsamflow.trainer train --preset cpu-demo --out $(DEMO_OUT)/run \
		data.roots=$(DEMO_OUT)/data data.masks=$(DEMO_OUT)/masks/stores \
		$(if $(wildcard $(DEMO_OUT)/run/checkpoints),--resume,)
	$(BIN)/python -m unsamflow.trainer report --run $(DEMO_OUT)/run --dataset synthetic --root $(DEMO_OUT)/heldout \
		--masks $(DEMO_OUT)/heldout_masks/stores --refine --out $(DEMO_OUT)/report
	@echo
	@echo "demo done:"
	@echo "  frames + exact flow:  $(DEMO_OUT)/data (manifest.json)"
	@echo "  mask stores:          $(DEMO_OUT)/masks/stores (verified), pictures in $(DEMO_OUT)/masks/pictures"
	@echo "  training run:         $(DEMO_OUT)/run (checkpoints/, metrics.jsonl)"
	@echo "  report:               $(DEMO_OUT)/report/report.md"

# Training and evaluation on your own data (the masks come from `make masks`):
#   make train PRESET=kitti-aug-hg-mf DATA=/data/KITTI2015 MASKS=/data/kitti_masks/stores OUT=runs/kitti
#   make evaluate CKPT=runs/kitti DATASET=kitti-2015-training EVAL_ROOT=/data/KITTI2015 [EVAL_MASKS=...]
train: $(STAMP)
	@test -n "$(PRESET)" -a -n "$(DATA)" -a -n "$(OUT)" || (echo "usage: make train PRESET=name DATA=/dataset/root MASKS=/mask/stores OUT=run_dir [OVERRIDES='key=value ...']"; exit 2)
	$(BIN)/python -m unsamflow.trainer train --preset $(PRESET) --out $(OUT) data.roots=$(DATA) \
		$(if $(MASKS),data.masks=$(MASKS),) $(OVERRIDES) $(if $(wildcard $(OUT)/checkpoints),--resume,)

evaluate: $(STAMP)
	@test -n "$(CKPT)" -a -n "$(DATASET)" -a -n "$(EVAL_ROOT)" || (echo "usage: make evaluate CKPT=run_dir|ckpt.pt DATASET=name EVAL_ROOT=/dataset/root [EVAL_MASKS=/mask/stores]"; exit 2)
	$(BIN)/python -m unsamflow.trainer evaluate --checkpoint $(CKPT) --dataset $(DATASET) --root $(EVAL_ROOT) \
		$(if $(EVAL_MASKS),--masks $(EVAL_MASKS),)

lint: $(STAMP)
	$(BIN)/ruff check .

# make bench writes to a scratch folder; make bench UPDATE=1 replaces benchmarks/results/.
bench: $(STAMP)
	UNSAMFLOW_BENCH_UPDATE=$(UPDATE) $(BIN)/python -m benchmarks.run_all

# The pipeline at cluster scale, simulated (~15 min on 2 CPU cores): a GPU-like replay segmenter, 1-8
# workers, an external dask scheduler/workers, 20,000 frames; UPDATE=1 writes benchmarks/results/scaling.*
scaling: $(STAMP)
	UNSAMFLOW_BENCH_UPDATE=$(UPDATE) $(BIN)/python -m benchmarks.bench_scaling $(SCALING_ARGS)

# Does the trainer learn flow? Supervised ceiling, the unsupervised cpu-small recipe, real pairs
# (~40 min on 2 CPU cores; LEARNING_ARGS='--parts ...' for a subset); UPDATE=1 writes benchmarks/results/
learning: $(STAMP)
	OMP_NUM_THREADS=1 UNSAMFLOW_BENCH_UPDATE=$(UPDATE) $(BIN)/python -m benchmarks.bench_learning $(LEARNING_ARGS)

# The parts (base / +hg / +aug / +aug+hg+mf, 3 seeds, 300 iterations each, 2 at a time: ~65 min on 2 CPU
# cores), after `make learning` (same --work folder; it runs only once the unsupervised run has learned)
ablation: $(STAMP)
	OMP_NUM_THREADS=1 UNSAMFLOW_BENCH_UPDATE=$(UPDATE) $(BIN)/python -m benchmarks.bench_learning --parts ablation \
		$(ABLATION_ARGS)

masks: $(STAMP)
	@test -n "$(ROOT)" || (echo "usage: make masks DATASET=sintel ROOT=/path/to/dataset OUT=dir [CHECKPOINT=sam.pth] [SHARDS=8] [WORKERS=N] [ALLOW_PARTIAL=1] [SEG_OPTS='-o points_per_side=16 --model-type vit_b']"; exit 2)
	$(BIN)/python -m unsamflow.pipeline run --layout $(DATASET) --root $(ROOT) --out $(or $(OUT),masks_out) --shards $(SHARDS) \
		$(if $(CHECKPOINT),--segmenter sam --checkpoint $(CHECKPOINT),) $(if $(WORKERS),--workers $(WORKERS),) \
		$(if $(ALLOW_PARTIAL),--allow-partial,) $(SEG_OPTS)

# One prepared GPU run (README "GPU check"): CUDA tests + every GPU figure into gpu_check/ in <= 8 minutes.
# No venv needed: on a bare GPU machine it installs the tree and the wheels carried in gpu_wheels/.
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

# The wheels that machine lacks (Python 3.12, manylinux x86-64) into gpu_wheels/ (ignored), checked with
# the tree against the 64 MiB one device call carries.
gpu-wheels: $(STAMP)
	$(BIN)/python scripts/gpu_wheels.py --dest gpu_wheels

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
