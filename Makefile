# Two commands: `make run` (the main job on the embedded CPU default) and `make test` (the test suite).
# Each creates the virtual environment in .venv when it is missing, with the exact versions of
# requirements.lock (the versions the tests last passed with). `make lock` regenerates the lock from
# the newest releases that pyproject.toml's ranges allow; run `make test` after it and commit both.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PIP_SPEC ?= pip==26.3
LOCK := requirements.lock

.PHONY: run test lock clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(PIP_SPEC)"
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev]"
	# DeepSpeed compiles its CPU ops on first use (the collective op; CPU Adam for learner.offload):
	# build them once here, not inside a run or a test
	$(PY) -c "from deepspeed.ops.op_builder.cpu import CPUAdamBuilder, ShareMemCommBuilder; ShareMemCommBuilder().load(); CPUAdamBuilder().load()"
	touch $@

run: $(VENV)/.installed
	$(PY) run_rl.py $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

# A throwaway environment with no constraints: the newest versions in range, frozen into the lock.
lock:
	rm -rf .lockvenv
	python3 -m venv .lockvenv
	.lockvenv/bin/python -m pip install -q "$(PIP_SPEC)"
	.lockvenv/bin/python -m pip install -q "$(TORCH_SPEC)"
	.lockvenv/bin/python -m pip install -q -e ".[dev]"
	{ echo "# Exact versions \`make test\` passed with; made by \`make lock\` on $$(date -u +%F), Python $$(.lockvenv/bin/python -c 'import platform; print(platform.python_version())')."; \
	  echo "# pyproject.toml keeps the compatible ranges; this file is used as pip constraints (-c)."; \
	  .lockvenv/bin/python -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK)
	rm -rf .lockvenv

clean:
	rm -rf $(VENV) .lockvenv runs .pytest_cache
