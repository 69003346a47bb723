# mobiledeploy: `make all` runs the whole job on the default config (params.yaml); `make test` runs
# the tests. Both bootstrap what they need: a virtualenv in .venv from requirements.lock, and the dataset.
# Another config: `make all PARAMS=configs/smoke.yaml`. Stages are file targets: `make convert`
# redoes only what is stale.

PARAMS ?= params.yaml
# MODEL=path/to/model.keras: your own ready-made model (params key model.file) instead of training one
MODEL ?=
# WORKERS=N: train, prune and shrink as N local workers of one multi-worker run (needs the config's
# train.distribute: multi_worker; README, "Scaling out")
WORKERS ?=
PYTHON ?= python3
# glibc's malloc keeps up to 8 arenas a core for TensorFlow's threads; 2 keep a streamed folder's
# training at 1.24 GB instead of 1.52 (100,000 images, docs/streaming.md)
export MALLOC_ARENA_MAX ?= 2
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(PY) -m pipeline
ARGS := --params $(PARAMS) $(if $(MODEL),--set 'model.file=$(MODEL)')
FIT_ARGS := $(ARGS) $(if $(WORKERS),--workers $(WORKERS))
BUILD := .build
VENV_STAMP := $(VENV)/.installed-stamp

.PHONY: all train prune cluster qat convert validate check gates zoo mtl-compare recipe-compare shrink sensitivity prune-compare quant-compare pictures \
        samples test test-fast bad-input-table diff data debian-dataset clean help lock
.DELETE_ON_ERROR:

all: check

help:
	@sed -n '1,5p' Makefile | sed 's/^# \{0,1\}//'
	@echo "targets: all train prune cluster qat convert validate check gates diff zoo mtl-compare recipe-compare shrink sensitivity prune-compare"
	@echo "         quant-compare"
	@echo "         pictures samples test test-fast bad-input-table diff data clean lock"

$(VENV_STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

# Resolve pyproject.toml's ranges again into requirements.lock: on purpose only, then re-run and review the gates.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install --quiet -e '.[test]'
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock && rm -rf .lock-venv

# Artefact paths for $(PARAMS) (NAME, PARAM_FILES, TEACHER, TRAINED, SHRUNK, PRUNED, CLUSTERED, QAT,
# TFLITE, REPORT, GATES), written
# by the CLI so the Makefile and the pipeline never disagree. Also validates the params before any work.
PATHS_MK := $(BUILD)/$(subst /,_,$(PARAMS))$(if $(MODEL),.$(subst /,_,$(MODEL))).mk
$(PATHS_MK): $(PARAMS) $(VENV_STAMP)
	@mkdir -p $(BUILD)
	@$(CLI) paths $(ARGS) > $@.tmp && { cat $@.tmp; echo '$$(PATHS_MK): $$(PARAM_FILES)'; } > $@ && rm $@.tmp
# help, clean and lock need neither the virtualenv nor the paths
ifneq ($(if $(MAKECMDGOALS),$(filter-out help clean lock,$(MAKECMDGOALS)),all),)
include $(PATHS_MK)
endif

data: $(VENV_STAMP)
	@$(CLI) data $(ARGS) 2>/dev/null || { $(MAKE) --no-print-directory debian-dataset && $(CLI) data $(ARGS); }

# Debian's dataset-fashion-mnist puts the four IDX files in /usr/share/datasets/fashion-mnist.
debian-dataset:
	@if command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "apt-get is not available: see README.md, 'Data', for other ways to provide Fashion-MNIST" >&2; fi

train: $(TRAINED)
prune: $(PRUNED)
cluster: $(CLUSTERED)
qat: $(QAT)
convert: $(TFLITE)
validate: $(REPORT)

ifeq ($(TRAIN),yes)
# distill.teacher: its config and model (or its file), when they exist; a missing one is the train stage's to name
$(TRAINED): $(PARAM_FILES) $(wildcard $(TEACHER)) | data
	$(CLI) train $(FIT_ARGS)
else
# model.file: your own ready-made model, which no stage makes
$(TRAINED):
	@test -e '$@' || { echo "error: model.file $@ not found" >&2; exit 1; }
endif

# Every stage also depends on the params: Make then calls it after any params edit, and the stage
# itself does nothing (and says so) if the params it uses and its inputs are unchanged.
# prune.enabled: false leaves magnitude pruning out
# structured.enabled: structured pruning is a stage, and the stages after it start from its model
ifneq ($(SHRUNK),)
$(SHRUNK): $(TRAINED) $(PARAM_FILES) | data
	$(CLI) shrink $(FIT_ARGS)
endif

ifneq ($(PRUNED),)
$(PRUNED): $(TRAINED) $(SHRUNK) $(PARAM_FILES) | data
	$(CLI) prune $(FIT_ARGS)
endif

# cluster.enabled: weight clustering of the pruned model (the trained one without pruning)
ifneq ($(CLUSTERED),)
$(CLUSTERED): $(TRAINED) $(SHRUNK) $(PRUNED) $(PARAM_FILES) | data
	$(CLI) cluster $(FIT_ARGS)
endif

# quantize.aware (qat, pqat, cqat, pcqat): quantization-aware training of the trained, pruned or clustered model
ifneq ($(QAT),)
$(QAT): $(TRAINED) $(SHRUNK) $(PRUNED) $(CLUSTERED) $(PARAM_FILES) | data
	$(CLI) qat $(FIT_ARGS)
endif

$(TFLITE) &: $(TRAINED) $(SHRUNK) $(PRUNED) $(CLUSTERED) $(QAT) $(PARAM_FILES)
	$(CLI) convert $(ARGS)

$(REPORT): $(TFLITE) $(PARAM_FILES)
	$(CLI) validate $(ARGS)

check: $(REPORT)
	$(CLI) check $(ARGS)

# Compare the current report with another (OLD=path/to/report.json), metric by metric.
diff: $(REPORT)
	@test -n "$(OLD)" || { echo "make diff OLD=path/to/old.report.json" >&2; exit 2; }
	$(CLI) diff $(OLD) $(REPORT)

# Rewrite $(GATES) from the current report: on purpose only, and commit the result.
gates: $(REPORT)
	$(CLI) check --update $(ARGS)

# Train every variant in params zoo.variants on the same budget; table and plot in tflite_out/zoo/.
zoo: $(VENV_STAMP) | data
	$(CLI) zoo $(ARGS)

# Single-task baselines against hard and soft sharing on a multi-task config; in tflite_out/mtl/.
# Run with PARAMS=configs/multifashion.yaml.
mtl-compare: $(VENV_STAMP) | data
	$(CLI) mtl-compare $(ARGS)

# The same student plain, with the config's augmentation, its teacher, and both; in tflite_out/recipes/.
# Run with PARAMS=configs/tiny.yaml (or any config that sets augment and distill.teacher): "both" is the config itself.
recipe-compare: $(VENV_STAMP) | data
	$(CLI) recipe-compare $(ARGS)

# Structured pruning (channels removed in rounds) of the trained model -> models/<name>.shrunk.keras.
shrink: $(TRAINED)
	$(CLI) shrink $(FIT_ARGS)

# Each layer's validation accuracy with 10-75% of its channels removed, no retraining.
sensitivity: $(TRAINED)
	$(CLI) sensitivity $(ARGS)

# Unpruned, magnitude, structured, structured + magnitude and one-shot models, int8, in one table.
prune-compare: $(TRAINED) $(PRUNED) shrink
	$(CLI) prune-compare $(ARGS)

# Every quantization of the config's trained and pruned models in one table (docs/quantization.md)
quant-compare: $(TRAINED) $(SHRUNK) $(PRUNED)
	$(CLI) quant-compare $(ARGS)

# A grid of training images with their labels, in tflite_out/pictures/.
samples: $(VENV_STAMP) | data
	$(CLI) samples $(ARGS)

# The first convolution's filters and a test image's feature maps, in tflite_out/pictures/.
pictures: $(TRAINED)
	$(CLI) pictures $(ARGS)

# The whole suite on both cores (pytest-xdist); test-fast: the unit tier only (no stage runs, no real training).
# Bytecode is cached even where PYTHONDONTWRITEBYTECODE is set: else each of the suite's processes compiles the
# package again, and each test worker rewrites every test module's assertions again
test: $(VENV_STAMP) data
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n 2 --dist worksteal

test-fast: $(VENV_STAMP) data
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -n 2 --dist worksteal -m "not e2e"

# Run the test suite and put its bad-input table (.build/bad_input.md) into docs/reliability.md between the markers.
bad-input-table: test
	$(PY) -c 'import pathlib, re; r = pathlib.Path("docs/reliability.md"); t = pathlib.Path("$(BUILD)/bad_input.md").read_text(); \
	  r.write_text(re.sub(r"(<!-- bad-input-table -->\n).*?(<!-- /bad-input-table -->)", lambda m: m[1] + t + m[2], r.read_text(), flags=re.S))'

clean:
	rm -rf $(BUILD) models/*.keras models/*.h5 models/*.json models/user tflite_out/*.tflite tflite_out/*.json tflite_out/*.md tflite_out/user \
	  tflite_out/zoo tflite_out/mtl tflite_out/recipes tflite_out/pictures tflite_out/prune_compare tflite_out/quant_compare tflite_out/*.png
