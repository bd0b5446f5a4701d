# The two commands a new user needs: `make demo` and `make test`. Each sets itself up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_CFG := configs/toy/faster_rcnn_R18_FPN_toy.yaml
DEMO_OUT ?= output/demo
DEMO_ITERS ?= 300
DEMO_DEVICE ?= cpu
DEMO_OPTS = OUTPUT_DIR $(DEMO_OUT) MODEL.DEVICE $(DEMO_DEVICE)

.PHONY: setup demo test lint data clean

setup:
	@bash scripts/setup_env.sh

data: setup
	@$(PY) tools/make_toy_dataset.py --out datasets/toy

# Train on the toy dataset, checkpoint, evaluate, resume, and draw predictions.
demo: data
	@rm -rf $(DEMO_OUT)
	@echo "== [1/3] training Faster R-CNN R18-FPN on the toy shapes ($(DEMO_ITERS) iterations)"
	$(PY) tools/train_net.py --config-file $(DEMO_CFG) $(DEMO_OPTS) SOLVER.MAX_ITER $(DEMO_ITERS)
	@echo "== [2/3] resuming from $$(cat $(DEMO_OUT)/last_checkpoint) for 10 more iterations"
	$(PY) tools/train_net.py --config-file $(DEMO_CFG) --resume $(DEMO_OPTS) \
		SOLVER.MAX_ITER $$(( $(DEMO_ITERS) + 10 )) DATASETS.TEST "()"
	@echo "== [3/3] drawing predictions on val images"
	$(PY) tools/visualize_predictions.py --config-file $(DEMO_CFG) --num-images 6 --score-threshold 0.7 \
		--output $(DEMO_OUT)/predictions $(DEMO_OPTS) MODEL.WEIGHTS $(DEMO_OUT)/model_final.pth

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint docker/Dockerfile
	$(PY) -m pytest -q -rs tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

clean:
	rm -rf output $(VENV) datasets/toy
