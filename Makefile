# solo_d2. Every target sets itself up first (idempotent: seconds when the venv is ready).
#   make demo    train SOLOv2 on the embedded shapes data (CPU), evaluate, draw predictions, all
#                within DEMO_MINUTES (10) of wall-clock time, set-up included
#                (make demo MODEL=SOLO | Decoupled_SOLO | Decoupled_SOLO_Light for the other heads;
#                 make demo DEMO_MINUTES=30 trains longer)
#   make test    run the test suite
#   make gpu-check  the CUDA tests and benchmarks on a GPU machine (results in output/gpu-check)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= SOLOv2
CONFIG ?= configs/$(MODEL)_shapes_quick.yaml
OUTPUT ?= output/demo$(if $(filter-out SOLOv2,$(MODEL)),_$(MODEL))
DATASETS ?= $(or $(SOLO_D2_DATASETS),$(DETECTRON2_DATASETS),datasets)
# the test suite in one worker process per core, a file per worker at a time (pytest-xdist)
PYTEST_ARGS ?= -n auto --dist loadfile
# extra train_net.py config overrides for make demo, e.g. TRAIN_OPTS="SOLVER.BASE_LR 0.002"
TRAIN_OPTS ?=
# The whole demo's wall-clock budget; training gets what set-up and data generation leave,
# less DEMO_RESERVE_S for the steps after it (drawing, plotting: ~20 s here, 60 s kept).
DEMO_MINUTES ?= 10
DEMO_RESERVE_S ?= 60

.PHONY: setup test demo bench bench-accuracy gpu-check clean

setup:
	@$(PYTHON) tools/setup_env.py --venv $(VENV)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo:
	@mkdir -p $(dir $(OUTPUT)) && date +%s > $(OUTPUT).start
	@$(MAKE) --no-print-directory setup
	$(PY) -W ignore::RuntimeWarning -m solo_d2.data.shapes --root $(DATASETS)/shapes
	@budget=$$(( $(DEMO_MINUTES) * 60 - $(DEMO_RESERVE_S) - $$(date +%s) + $$(cat $(OUTPUT).start) )); \
	echo "training budget: $$budget s of the $(DEMO_MINUTES) minutes"; \
	echo $(PY) train_net.py --config-file $(CONFIG) OUTPUT_DIR $(OUTPUT) SOLVER.TIME_BUDGET_S $$budget $(TRAIN_OPTS); \
	$(PY) train_net.py --config-file $(CONFIG) OUTPUT_DIR $(OUTPUT) SOLVER.TIME_BUDGET_S $$budget $(TRAIN_OPTS)
	$(PY) tools/predict.py --config-file $(CONFIG) --input $(DATASETS)/shapes/val \
		--max-images 16 --output $(OUTPUT)/predictions MODEL.WEIGHTS $(OUTPUT)/model_final.pth \
		$(TRAIN_OPTS)
	$(PY) tools/plot_training.py $(OUTPUT)
	@echo "----------------------------------------------------------------------------"
	@grep -h "\[solo_d2\]" $(OUTPUT)/log.txt | tail -n 1
	@grep -h "Time budget" $(OUTPUT)/log.txt | tail -n 1 | sed 's/.*INFO: /schedule: /'
	@grep -h "Overall training speed" $(OUTPUT)/log.txt | tail -n 1 | sed 's/.*INFO: /training: /'
	@echo "drawn predictions: $(OUTPUT)/predictions/"
	@echo "training curves:   $(OUTPUT)/training_curves.png"
	@echo "demo wall time, set-up included: $$(( $$(date +%s) - $$(cat $(OUTPUT).start) )) s"
	@rm -f $(OUTPUT).start

bench: setup
	$(PY) tools/benchmark.py --output output/bench

bench-accuracy: setup
	$(PY) tools/benchmark.py --sections accuracy --output output/bench-accuracy

gpu-check: setup
	$(PY) tools/gpu_check.py --output output/gpu-check

clean:
	rm -rf output .pytest_cache
