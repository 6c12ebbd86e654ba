# lungbench: every target a user types. `make help` lists them.
# Public variables (keep them working): DATA DATA_ROOT DATA_OUT BACKBONE SOLVER RUN_DIR
# EXPERIMENT SWEEP_DIR SWEEP RUN INPUT OUT ARGS
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Public variables come from the command line or the defaults below, never from same-named
# environment variables: HPC centres export $WORK (the user's work file system), and an
# exported DATA_ROOT must not choose what a plain `make data` reads or writes.
PUBLIC_VARS := WORK DATA DATA_ROOT DATA_OUT BACKBONE SOLVER RUN_DIR EXPERIMENT SWEEP_DIR SWEEP RUN INPUT OUT ARGS DRY
$(foreach v,$(PUBLIC_VARS),$(if $(filter environment%,$(origin $(v))),$(eval undefine $(v))))

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.lungbench-stamp
WORK       ?= work
ifeq ($(strip $(WORK)),)
$(error WORK is empty: outputs would go to /data, /runs, /sweeps. Pass WORK=<folder>, or leave it out for ./work)
endif

DATA_ROOT  ?=
# DATA_ROOT alone converts that folder (the real dataset's layout); the phantom makes its own
DATA       ?= $(if $(strip $(DATA_ROOT)),covid19_ct_seg,phantom)
DATA_OUT   ?= $(WORK)/data/$(DATA)
BACKBONE   ?= r50_fpn
SOLVER     ?= smoke
RUN_DIR    ?= $(WORK)/runs/$(BACKBONE)-$(SOLVER)
EXPERIMENT ?= grid9
SWEEP_DIR  ?= $(WORK)/sweeps/$(EXPERIMENT)
SWEEP      ?=
RUN        ?=
INPUT      ?=
OUT        ?=
ARGS       ?=

.PHONY: help setup data download train sweep predict report demo test test-fast perf gpu-check wheels clean

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The venv is rebuilt when the dependency files change (the stamp is older than them).
$(STAMP): pyproject.toml benchmark/build_detectron2.py
	@echo "==> setting up $(VENV) (torch, detectron2, ...): a few minutes the first time"
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m benchmark.build_detectron2 --install
	touch $(STAMP)

setup: $(STAMP) ## Create/refresh .venv with torch, detectron2 (pure-Python build) and the rest

data: $(STAMP) ## Convert NIfTI to COCO: DATA_ROOT=raw dir (or DATA=phantom) DATA_OUT=dir
	$(PY) -m converters.convert data=$(DATA) $(if $(DATA_ROOT),data.root=$(DATA_ROOT)) out=$(DATA_OUT) $(ARGS)

download: $(STAMP) ## Fetch + verify + extract the Zenodo archives into DATA_ROOT (default work/raw/covid19_ct_seg)
	$(PY) -m converters.download --dest $(or $(DATA_ROOT),$(WORK)/raw/covid19_ct_seg) $(ARGS)

train: $(STAMP) ## One run: BACKBONE=r50_fpn SOLVER=paper|smoke DATA_OUT=dir RUN_DIR=dir -> RUN_DIR/result.json
	$(PY) -m benchmark.train backbone=$(BACKBONE) solver=$(SOLVER) dataset_dir=$(DATA_OUT) hydra.run.dir=$(RUN_DIR) $(ARGS)

sweep: $(STAMP) ## Multirun EXPERIMENT=grid9|table3|smoke over DATA_OUT into SWEEP_DIR; non-zero if a run failed
	$(PY) -m benchmark.sweep +experiment=$(EXPERIMENT) dataset_dir=$(DATA_OUT) hydra.sweep.dir=$(SWEEP_DIR) $(ARGS)

predict: $(STAMP) ## RUN=run dir (keep_checkpoint=true) INPUT=NIfTI file|folder OUT=dir -> OUT/<case>.nii.gz + volumes.csv
	@test -n "$(strip $(RUN))" -a -n "$(strip $(INPUT))" -a -n "$(strip $(OUT))" || { echo "make predict needs RUN=<run dir trained with ARGS=keep_checkpoint=true> INPUT=<NIfTI file or folder> OUT=<new folder>" >&2; exit 2; }
	$(PY) -m benchmark.predict --run $(RUN) --input $(INPUT) --out $(OUT) $(ARGS)

report: $(STAMP) ## Build SWEEP/report/ (CSV, Markdown, plots, report.html); default: the latest sweep
	$(PY) -m reports.build $(if $(SWEEP),$(SWEEP),--latest $(WORK)/sweeps)

# The demo's data: 2 folds (5 test cases each, enough for the report's paired tests); infection
# fragments under 10 px (cut off by the lung border) are not kept as objects to detect.
demo: $(STAMP) ## Phantom -> COCO -> nine-backbone smoke sweep on CPU -> report.html
	$(MAKE) --no-print-directory data DATA=phantom DATA_ROOT= DATA_OUT=$(WORK)/data/phantom ARGS='splits.patient_kfold.k=2 splits.slice_random.k=2 infection.min_area=10'
	rc=0; $(MAKE) --no-print-directory sweep EXPERIMENT=demo DATA_OUT=$(WORK)/data/phantom SWEEP_DIR=$(WORK)/sweeps/demo || rc=$$?
	$(MAKE) --no-print-directory report SWEEP=$(WORK)/sweeps/demo
	echo "demo: open $(WORK)/sweeps/demo/report/report.html (demo numbers: not comparable to the paper, nor to each other)"
	exit $$rc

test: $(STAMP) ## Every test tier (what CI runs)
	$(PY) -m pytest $(ARGS)

test-fast: $(STAMP) ## Tests without the slow tier (training, sweeps, Slurm, browser)
	$(PY) -m pytest -m "not slow" $(ARGS)

perf: $(STAMP) ## Speed benchmarks -> perf/RESULTS.md and perf/results.json
	$(PY) -m perf.run $(ARGS)

gpu-check: $(STAMP) ## The GPU check (perf/GPU.md): speed/memory per backbone, runs per GPU; DRY=1 on a CPU
	PYTHON=$(PY) bash perf/gpu_check.sh $(if $(DRY),--dry-run) $(ARGS)

wheels: $(STAMP) ## Fill .whl/ with the wheels a GPU machine without internet needs (perf/GPU.md)
	PYTHON=$(PY) bash perf/wheels.sh

clean: ## Delete lungbench's own outputs under WORK (marked folders only); keeps .venv and anything else
	$(PYTHON_SYS) -m converters.clean '$(WORK)'
