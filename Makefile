# lungbench: every target a user types. `make help` lists them.
# Public variables (keep them working): WORK DATA DATA_ROOT DATA_OUT BACKBONE SOLVER RUN_DIR
# EXPERIMENT SWEEP_DIR SWEEP RUN INPUT OUT ARGS DRY
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Public variables come from the command line or the defaults below, never from same-named
# environment variables: HPC centres export $WORK (the user's work file system), and an
# exported DATA_ROOT must not choose what a plain `make data` reads or writes.
PUBLIC_VARS := WORK DATA DATA_ROOT DATA_OUT BACKBONE SOLVER RUN_DIR EXPERIMENT SWEEP_DIR SWEEP RUN INPUT OUT ARGS DRY
$(foreach v,$(PUBLIC_VARS),$(if $(filter environment%,$(origin $(v))),$(eval undefine $(v))))
# What the user typed is text, never make code: `$(shell ...)` in a value stays those characters
# ($(value) is the unexpanded text). Recipes never paste a value into shell code either: each
# is exported as LB_<NAME> and converters/launch.py hands it to the program as one argument.
GIVEN := $(foreach v,$(PUBLIC_VARS),$(if $(filter command line,$(origin $(v))),$(v)))
$(foreach v,$(GIVEN),$(eval override $(v) := $$(value $(v))))

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
DRY        ?=
$(foreach v,$(PUBLIC_VARS),$(eval export LB_$(v) := $$($(v))))
export LB_GIVEN := $(GIVEN)

# Every recipe that takes a user's value runs it through the launcher (standard library only,
# so `make clean` and `make -n` work before set-up). `+`: under `make -n` it still runs, with
# --print, and shows the exact argument list instead of running it. With .ONESHELL a `+` on a
# recipe's first line covers the whole recipe: a recipe that starts with the launcher runs
# nothing else but sub-makes (which get -n too) and echoes.
DRYRUN := $(if $(findstring n,$(firstword -$(MAKEFLAGS))),--print)
LAUNCH := +@$(PYTHON_SYS) -m converters.launch
EXPERIMENTS := $(sort $(basename $(notdir $(wildcard conf/experiment/*.yaml))))

.PHONY: help setup data download train sweep predict report demo reproduce test test-fast perf gpu-check gpu-bundle clean

help: ## List the targets
	$(LAUNCH) help --check
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	echo "  experiments (EXPERIMENT=, conf/experiment/): $(EXPERIMENTS)"

# The venv is rebuilt when the dependency files change (the stamp is older than them).
$(STAMP): pyproject.toml benchmark/build_detectron2.py
	@echo "==> setting up $(VENV) (torch, detectron2, ...): a few minutes the first time"
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip 'setuptools>=77' wheel
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m benchmark.build_detectron2 --install
	touch $(STAMP)

setup: $(STAMP) ## Create/refresh .venv with torch, detectron2 (pure-Python build) and the rest
	$(LAUNCH) setup --check

data: $(STAMP) ## Convert NIfTI to COCO: DATA_ROOT=raw dir (or DATA=phantom) DATA_OUT=dir
	$(LAUNCH) data --python $(PY) $(DRYRUN)

download: $(STAMP) ## Fetch + verify + extract the Zenodo archives into DATA_ROOT (default work/raw/covid19_ct_seg)
	$(LAUNCH) download --python $(PY) $(DRYRUN)

train: $(STAMP) ## One run: BACKBONE=r50_fpn SOLVER=paper|smoke DATA_OUT=dir RUN_DIR=dir -> RUN_DIR/result.json
	$(LAUNCH) train --python $(PY) $(DRYRUN)

sweep: $(STAMP) ## Multirun EXPERIMENT=<name, see below> [SOLVER=] over DATA_OUT into SWEEP_DIR; non-zero if a run failed
	$(LAUNCH) sweep --python $(PY) $(DRYRUN)

predict: $(STAMP) ## RUN=run dir (keep_checkpoint=true) INPUT=NIfTI file|folder OUT=dir -> OUT/<case>.nii.gz + volumes.csv
	$(LAUNCH) predict --python $(PY) $(DRYRUN)

report: $(STAMP) ## Build SWEEP/report/ (CSV, Markdown, plots, report.html); default: the latest sweep
	$(LAUNCH) report --python $(PY) $(DRYRUN)

# The demo's data: 2 folds (10 test cases each, enough for the report's paired tests); infection
# fragments under 10 px (cut off by the lung border) are not kept as objects to detect.
demo: $(STAMP) ## Phantom -> COCO -> nine-backbone smoke sweep on CPU -> report.html
	$(LAUNCH) demo --check
	$(MAKE) --no-print-directory -o $(STAMP) data DATA=phantom DATA_ROOT= DATA_OUT="$$LB_WORK/data/phantom" ARGS='splits.patient_kfold.k=2 splits.slice_random.k=2 infection.min_area=10'
	rc=0; $(MAKE) --no-print-directory -o $(STAMP) sweep EXPERIMENT=demo DATA_OUT="$$LB_WORK/data/phantom" SWEEP_DIR="$$LB_WORK/sweeps/demo" || rc=$$?
	$(MAKE) --no-print-directory -o $(STAMP) report SWEEP="$$LB_WORK/sweeps/demo"
	printf 'demo: open %s (demo numbers: not comparable to the paper)\n' "$$LB_WORK/sweeps/demo/report/report.html"
	exit $$rc

# The paper's protocol on a GPU machine with internet (converters/launch.py prints the plan
# first). Each step skips what is done: the download keeps verified archives, the conversion is
# "up to date" for the same sources and settings, the sweep does not redo a finished run.
reproduce: $(STAMP) ## The paper's Table 3 on a GPU: download, convert, table3 over the 5 official folds, report
	$(LAUNCH) reproduce --python $(PY) $(DRYRUN)

test: $(STAMP) ## Every test tier (what CI runs)
	$(LAUNCH) test --python $(PY) $(DRYRUN)

test-fast: $(STAMP) ## Tests without the slow tier (training, sweeps, Slurm, browser)
	$(LAUNCH) test-fast --python $(PY) $(DRYRUN)

perf: $(STAMP) ## Speed benchmarks -> perf/RESULTS.md and perf/results.json
	$(LAUNCH) perf --python $(PY) $(DRYRUN)

gpu-check: $(STAMP) ## The GPU check (perf/GPU.md): speed/memory per backbone, runs per GPU; DRY=1 on a CPU
	$(LAUNCH) gpu-check --python $(PY) $(DRYRUN)

gpu-bundle: $(STAMP) ## Fill .whl/ with what an offline GPU machine lacks (CPython 3.12; perf/GPU.md) and print its size with the checkout
	$(LAUNCH) gpu-bundle --python $(PY) $(DRYRUN)

clean: ## Delete lungbench's own outputs under WORK (marked folders holding only their own files); keeps .venv and anything else
	$(LAUNCH) clean $(DRYRUN)
