# The two commands of the README. Both create .venv when it is missing and are safe to re-run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP_EXP := $(VENV)/.installed-experiments
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP_EXP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[experiments]"
	touch $@

$(STAMP_DEV): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[experiments,dev]"
	touch $@ $(STAMP_EXP)

# The flagship run: a gmm8 score model (the teacher), then its one-step distillation with
# Diff-Instruct and DisBack (degradation path + backtracking) in two regimes: G0 where the
# teacher's score is accurate (runs/demo/distill) and G0 off the data, where the teacher's score
# is mismatched (runs/demo/distill_far); each results.md gives DisBack's ratio to Diff-Instruct
# and the positive control's.
DEMO_METHODS := diff_instruct,disback_fixed,disback_adaptive,diff_instruct_ahead
demo: $(STAMP_EXP)
	$(PY) -m experiments.main --config=configs/score_matching.py:gmm8 --workdir=runs/demo/teacher
	$(PY) -m experiments.main --config=configs/distill.py:gmm8 --workdir=runs/demo/distill \
		--config.teacher.workdir=runs/demo/teacher --config.methods=$(DEMO_METHODS)
	$(PY) -m experiments.main --config=configs/distill.py:gmm8_far \
		--workdir=runs/demo/distill_far --config.teacher.workdir=runs/demo/teacher \
		--config.methods=$(DEMO_METHODS)

# Test files are spread over TEST_WORKERS processes (one per core here); a file's tests stay in
# one process so its module fixtures are built once.
TEST_WORKERS ?= 2
test: $(STAMP_DEV)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

# Speed benchmark of the DSM train step; PyTorch (CPU build) is installed only for this target.
bench: $(STAMP_EXP)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m experiments.benchmarks.dsm_step

lint: $(STAMP_DEV)
	$(PY) -m ruff check scorejax experiments configs tests

clean:
	rm -rf $(VENV) runs
