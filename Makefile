# The README's two commands are `make demo` and `make test`; CI runs `make test` (see .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# --data, else $SIMENGINE_DATA, else the shared copy beside this checkout, else ./data/imagenette2-160.
DATA ?= $(firstword $(SIMENGINE_DATA) $(wildcard ../shared/data/imagenette2-160) data/imagenette2-160)
VAL := $(DATA)/val
# A collection unlike ImageNet, for the first-run benchmark (its new folder and a second accuracy split).
TRASHNET ?= $(firstword $(wildcard ../shared/data/trashnet-256) data/trashnet-256)

.PHONY: install demo test fuzz bench bench-ablation builtin-model clean-index

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: install
	test -d $(DATA) || $(BIN)/simengine data fetch imagenette --dest data
	$(BIN)/simengine index build --data $(DATA)
	$(BIN)/simengine index info
	@echo "--- pair: two tench images"
	$(BIN)/simengine query $(VAL)/n01440764/ILSVRC2012_val_00009111.JPEG $(VAL)/n01440764/ILSVRC2012_val_00009191.JPEG
	@echo "--- triplet: church, tench, church"
	$(BIN)/simengine query $(VAL)/n03028079/ILSVRC2012_val_00003351.JPEG $(VAL)/n01440764/ILSVRC2012_val_00009111.JPEG $(VAL)/n03028079/ILSVRC2012_val_00003682.JPEG
	@echo "--- neighbours of a parachute"
	$(BIN)/simengine query $(VAL)/n03888257/ILSVRC2012_val_00001440.JPEG --k 5

test: install
	$(BIN)/python -m pytest -q

# The fuzz tests with Hypothesis's long profile (5000 cases each); prints how many cases were tried.
fuzz: install
	$(BIN)/python -m pytest -q -m fuzz --hypothesis-profile=fuzz --hypothesis-show-statistics tests

# The standard benchmark set; needs the index that `make demo` builds. Results land in benchmarks/results/.
bench: install
	$(BIN)/python benchmarks/accuracy.py --data $(DATA)
	$(BIN)/python benchmarks/accuracy.py --data $(DATA) --backbone tf_efficientnet_lite1 --name accuracy_lite1
	$(BIN)/python benchmarks/accuracy.py --data $(DATA) --backbone tf_efficientnet_lite2 --name accuracy_lite2
	$(BIN)/python benchmarks/latency.py --data $(DATA)
	$(BIN)/python benchmarks/search_scale.py
	$(BIN)/python benchmarks/load.py --data $(DATA) --total-requests 10000
	$(BIN)/python benchmarks/upload_cost.py --index indexes/default
	$(BIN)/python benchmarks/index_write.py --index indexes/default
	$(BIN)/python benchmarks/unseen_classes.py --data $(DATA)
	$(BIN)/python benchmarks/collection.py --data $(DATA) --model indexes/default-model --n 10000
	$(BIN)/python benchmarks/dedup.py --data $(DATA) --model indexes/default-model
	$(BIN)/python benchmarks/dedup.py --data $(DATA) --model builtin --name dedup_builtin --no-leakage
	$(BIN)/python benchmarks/curation.py --data $(DATA) --trashnet $(TRASHNET)
	$(BIN)/python benchmarks/map_projection.py --index indexes/default
	$(BIN)/python benchmarks/app.py --sizes 10000 100000
	$(BIN)/python benchmarks/first_run.py --folder $(TRASHNET)/train --eval $(VAL) $(TRASHNET)/val --model indexes/default-model
	$(BIN)/python benchmarks/adaptation.py --data $(TRASHNET)
	$(BIN)/python benchmarks/adaptation.py --data $(TRASHNET) --backbones --unseen $(DATA) --halves 0 --name adaptation_unseen
	$(BIN)/python benchmarks/few_labels.py --trashnet $(TRASHNET) --imagenette $(DATA)

# Regenerate the built-in model's package data (simengine/model/builtin_data/) from Imagenette: about 2 min with the
# feature cache warm, 10 without; see PROVENANCE.json there.
builtin-model: install
	$(BIN)/python -m simengine.training.builtin --data $(DATA)

# Ablation of the backbone's input size, crop and pooling (about 30 min: it embeds the dataset four times).
bench-ablation: install
	$(BIN)/python benchmarks/input_ablation.py --data $(DATA)
