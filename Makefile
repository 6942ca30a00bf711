# Two commands on a fresh machine:  make demo   |   make test
# Both create .venv on first use, with the exact versions pinned in requirements/dev.txt (the lock; torch
# aside: TORCH pins the CPU build of torch, see README: GPU machines). `make lock` adds what pyproject.toml
# gained and keeps every other pin; `make lock-upgrade` moves every pin to the newest release;
# `make test-latest` runs the suite in a separate venv against the newest releases, without the lock.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
LOCK   ?= requirements/dev.txt
LATEST ?= build/venv-latest
BIN     = $(VENV)/bin

.PHONY: demo test test-latest lint lock lock-upgrade bench weights bundles clean

$(BIN)/stereodsc: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$$(grep -E '^pip==' $(LOCK))"
	$(BIN)/pip install --quiet "$(TORCH)" -r $(LOCK) -e ".[dev]"
	touch $@

demo: $(BIN)/stereodsc
	$(BIN)/stereodsc demo

test: $(BIN)/stereodsc
	$(BIN)/python -m pytest -q

# The newest release of everything the dev extra names (torch stays $(TORCH): PyPI's default build is CUDA's).
test-latest:
	test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager "$(TORCH)" -e ".[dev]"
	$(LATEST)/bin/pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q

PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --extra dev --strip-extras \
	--no-emit-index-url --no-emit-find-links --unsafe-package stereodsc --unsafe-package torch -o $(LOCK) pyproject.toml
lock: $(BIN)/stereodsc
	$(PIP_COMPILE)
lock-upgrade: $(BIN)/stereodsc
	$(PIP_COMPILE) --upgrade

lint: $(BIN)/stereodsc
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(BIN)/stereodsc
	$(BIN)/python benchmarks/bench_entropy.py
	$(BIN)/python benchmarks/bench_rectify.py

# Train every shipped model on the KITTI drive in ../shared/data (CPU; resumable: rerun after an
# interruption). `make -j2 weights` runs two chains side by side. Lower-rate points warm-start from
# higher ones, dsin's points from balle2017 at the same lambda; ndic_cam (one point, not shipped)
# from ndic: its lower-rate points diverged (README, "Shipped models").
LAMBDAS = kitti kitti_l0.0008 kitti_l0.0003 kitti_l0.0001
WEIGHTS = $(foreach m,balle2017 ndic dsin,$(foreach l,$(LAMBDAS),runs/$(m)_$(l)/finished)) runs/ndic_cam_kitti/finished

weights: native-weights $(WEIGHTS)

runs/%/finished: configs/%.toml | $(BIN)/stereodsc
	$(BIN)/stereodsc train --config $< --resume
	touch $@

define chain
runs/$(1)_kitti_l0.0008/finished: runs/$(1)_kitti/finished
runs/$(1)_kitti_l0.0003/finished: runs/$(1)_kitti_l0.0008/finished
runs/$(1)_kitti_l0.0001/finished: runs/$(1)_kitti_l0.0003/finished
endef
$(foreach m,balle2017 ndic,$(eval $(call chain,$(m))))
runs/ndic_cam_kitti/finished: runs/ndic_kitti/finished
$(foreach l,$(LAMBDAS),$(eval runs/dsin_$(l)/finished: runs/balle2017_$(l)/finished))

# The native-scale models (issue 13): minimal camera encoder (preset native), 256x512 crops of every data
# set in ../shared/data. `make native-weights` (also part of `make weights`) continues every run on a fresh
# clone: each run keeps a compact checkpoint in weights/ (committed). Commit weights/ at the end of a session:
# a session's processes end within 3 hours. Each lower lambda warm-starts from the next higher one's intra
# codec; ndic from the intra codec of its lambda, its side images decoded by it (and by the next higher
# quality); ndic_cam (one point) from ndic.
# At the shipped qualities (NATIVE_BACKBONE) the intra codec is DSIN's jointly trained backbone: DSIN trains
# on (the first time from an intra run trained alone to its [train] steps), then scripts/intra_from_dsin.py
# writes the intra weights from it, so both cameras run one camera graph. The other points train intra alone.
NATIVE_LAMBDAS = 0.05 0.025 0.012 0.005 0.002 0.0008 0.0003 0.0001
NATIVE_BACKBONE = 0.05 0.025 0.012 0.005 0.002 0.0003
NATIVE_WEIGHTS = $(foreach m,balle2018 dsin ndic,$(foreach l,$(NATIVE_LAMBDAS),runs/$(m)_native_l$(l)/finished)) \
	runs/ndic_cam_native_l0.012/finished
.PHONY: native-weights
native-weights: $(NATIVE_WEIGHTS)
native_lower = $(wordlist 2,99,$(NATIVE_LAMBDAS))
native_higher = $(wordlist 1,$(words $(native_lower)),$(NATIVE_LAMBDAS))
# $(1) = a lambda, $(2) = the next higher one (empty at the top)
define native_point
ifneq ($(filter $(1),$(NATIVE_BACKBONE)),)
runs/dsin_native_l$(1)/finished: $(if $(2),runs/balle2018_native_l$(2)/finished)
runs/balle2018_native_l$(1)/finished: runs/dsin_native_l$(1)/finished
else
runs/balle2018_native_l$(1)/finished: $(if $(2),runs/balle2018_native_l$(2)/finished)
runs/dsin_native_l$(1)/finished: runs/balle2018_native_l$(1)/finished
endif
runs/ndic_native_l$(1)/finished: runs/balle2018_native_l$(1)/finished
endef
native_pairs = $(firstword $(NATIVE_LAMBDAS)): $(join $(native_lower),$(addprefix :,$(native_higher)))
$(foreach p,$(native_pairs),$(eval $(call native_point,$(word 1,$(subst :, ,$(p))),$(word 2,$(subst :, ,$(p))))))
runs/ndic_cam_native_l0.012/finished: runs/ndic_native_l0.012/finished
BACKBONE_DSIN = $(foreach l,$(NATIVE_BACKBONE),runs/dsin_native_l$(l)/finished)
BACKBONE_INTRA = $(foreach l,$(NATIVE_BACKBONE),runs/balle2018_native_l$(l)/finished)
$(BACKBONE_DSIN): runs/dsin_native_l%/finished: configs/dsin_native_l%.toml | $(BIN)/stereodsc
	test -f weights/dsin_native_l$*.pt || $(BIN)/stereodsc train --config configs/balle2018_native_l$*.toml --resume
	$(BIN)/stereodsc train --config $< --resume
	$(BIN)/python scripts/intra_from_dsin.py $*
	touch $@
$(BACKBONE_INTRA): runs/balle2018_native_l%/finished: runs/dsin_native_l%/finished
	touch $@

# Export the trained runs as the bundles that ship in the package (float16 kernels, parity-checked):
# default = the paper-protocol models (128x256 crops of one drive); native = the native-resolution intra
# codec and DSIN (band SI-Finder, one graph for every size) from the compact checkpoints in weights/.
# After a bundle changes: scripts/make_golden_shipped.py, and the model card in tests/test_shipped.py.
ckpts = $(foreach l,$(LAMBDAS),runs/$(1)_$(l)/latest.pt)
SHIPPED_NATIVE_INTRA = $(NATIVE_BACKBONE)
SHIPPED_NATIVE_DSIN = $(NATIVE_BACKBONE)
native_ckpts = $(foreach l,$(2),weights/$(1)_native_l$(l).pt)
.PHONY: default-bundle native-bundle
bundles: default-bundle native-bundle
default-bundle: $(WEIGHTS)
	$(BIN)/stereodsc export $(call ckpts,balle2017) $(call ckpts,ndic) --out src/stereodsc/bundles/default --overwrite --licence LICENSES/KITTI-DERIVED-NOTICE.txt
native-bundle: | $(BIN)/stereodsc  # from the committed weights/: no training first
	$(BIN)/stereodsc export $(call native_ckpts,balle2018,$(SHIPPED_NATIVE_INTRA)) $(call native_ckpts,dsin,$(SHIPPED_NATIVE_DSIN)) --out src/stereodsc/bundles/native --size 375x1242 --size 128x256 --overwrite --licence LICENSES/NATIVE-MIX-DERIVED-NOTICE.txt

clean:
	rm -rf $(VENV) build *.egg-info
