# solo_d2. Every target sets itself up first (idempotent: seconds when the venv is ready).
#   make demo    train SOLOv2 on the embedded shapes data (CPU), evaluate, draw predictions
#                (make demo MODEL=SOLO | Decoupled_SOLO | Decoupled_SOLO_Light for the other heads)
#   make test    run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= SOLOv2
CONFIG ?= configs/$(MODEL)_shapes_quick.yaml
OUTPUT ?= output/demo$(if $(filter-out SOLOv2,$(MODEL)),_$(MODEL))
DATASETS ?= $(or $(SOLO_D2_DATASETS),$(DETECTRON2_DATASETS),datasets)
PYTEST_ARGS ?=
# extra train_net.py config overrides for make demo, e.g. TRAIN_OPTS="SOLVER.MAX_ITER 2000"
TRAIN_OPTS ?=

.PHONY: setup test demo bench bench-accuracy clean

setup:
	@$(PYTHON) tools/setup_env.py --venv $(VENV)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo:
	@mkdir -p $(dir $(OUTPUT)) && date +%s > $(OUTPUT).start
	@$(MAKE) --no-print-directory setup
	$(PY) train_net.py --config-file $(CONFIG) OUTPUT_DIR $(OUTPUT) $(TRAIN_OPTS)
	$(PY) tools/predict.py --config-file $(CONFIG) --input $(DATASETS)/shapes/val \
		--max-images 16 --output $(OUTPUT)/predictions MODEL.WEIGHTS $(OUTPUT)/model_final.pth \
		$(TRAIN_OPTS)
	$(PY) tools/plot_training.py $(OUTPUT)
	@echo "----------------------------------------------------------------------------"
	@grep -h "\[solo_d2\]" $(OUTPUT)/log.txt | tail -n 1
	@grep -h "Overall training speed" $(OUTPUT)/log.txt | tail -n 1 | sed 's/.*INFO: /training: /'
	@echo "drawn predictions: $(OUTPUT)/predictions/"
	@echo "training curves:   $(OUTPUT)/training_curves.png"
	@echo "demo wall time, set-up included: $$(( $$(date +%s) - $$(cat $(OUTPUT).start) )) s"
	@rm -f $(OUTPUT).start

bench: setup
	$(PY) tools/benchmark.py --output output/bench

bench-accuracy: setup
	$(PY) tools/benchmark.py --sections accuracy --output output/bench-accuracy

clean:
	rm -rf output .pytest_cache
