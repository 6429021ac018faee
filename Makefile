# Two commands: `make run` (the main job on the embedded CPU default) and `make test` (the test suite).
# Each creates the virtual environment in .venv when it is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# DeepSpeed's CPU collective op is compiled on first use; build it once here, not inside a run
	$(PY) -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()"
	touch $@

run: $(VENV)/.installed
	$(PY) run_rl.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs .pytest_cache
