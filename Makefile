# Two commands on a fresh machine:  make demo   |   make test
# Both create .venv on first use. TORCH pins the CPU build of torch (see README: GPU machines).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: demo test lint bench weights bundles clean

$(BIN)/stereodsc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $@

demo: $(BIN)/stereodsc
	$(BIN)/stereodsc demo

test: $(BIN)/stereodsc
	$(BIN)/python -m pytest -q

lint: $(BIN)/stereodsc
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/mypy

bench: $(BIN)/stereodsc
	$(BIN)/python benchmarks/bench_entropy.py
	$(BIN)/python benchmarks/bench_rectify.py

# Train every shipped model on the KITTI drive in ../shared/data (CPU; resumable: rerun after an
# interruption). `make -j2 weights` runs two chains side by side. Lower-rate points warm-start from
# higher ones, dsin's points from balle2017 at the same lambda; ndic_cam (one point, not shipped)
# from ndic: its lower-rate points diverged (README, "Shipped models").
LAMBDAS = kitti kitti_l0.0008 kitti_l0.0003 kitti_l0.0001
WEIGHTS = $(foreach m,balle2017 ndic dsin,$(foreach l,$(LAMBDAS),runs/$(m)_$(l)/finished)) runs/ndic_cam_kitti/finished

weights: $(WEIGHTS)

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

# Export the trained runs as the bundles that ship in the package (float16 kernels, parity-checked;
# DSIN's host graph is per size: 128x256 only, to stay within the 30 MB the package ships).
ckpts = $(foreach l,$(LAMBDAS),runs/$(1)_$(l)/latest.pt)
bundles: weights
	$(BIN)/stereodsc export $(call ckpts,balle2017) $(call ckpts,ndic) --out src/stereodsc/bundles/default --overwrite
	$(BIN)/stereodsc export $(call ckpts,dsin) --out src/stereodsc/bundles/dsin --size 128x256 --overwrite

clean:
	rm -rf $(VENV) build *.egg-info
