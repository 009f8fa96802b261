# The two commands: `make run` and `make test`. Both create .venv on first use
# (and again when pyproject.toml changes), so a new machine needs only Python.

VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test venv lint clean bench soak

run: $(STAMP)
	$(VPY) -m herald.devstack run

test: $(STAMP)
	$(VPY) -m herald.devstack test $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@PY=""; for c in python3 python3.13 python3.12 python3.11; do \
	  if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then PY=$$c; break; fi; \
	done; \
	if [ -z "$$PY" ]; then echo "Herald needs Python >= 3.11 (python3 --version says: $$(python3 --version 2>&1))"; exit 1; fi; \
	echo "[herald] creating $(VENV) with $$PY and installing Herald"; \
	$$PY -m venv $(VENV) && \
	$(VPY) -m pip install --quiet --upgrade pip && \
	$(VPY) -m pip install --quiet -e '.[dev,embedded]' && \
	$(VPY) -m pip install --quiet -e "./clients/python[django]"
	@touch $(STAMP)

# Every benchmark and the summary of docs/benchmarks.md (about an hour; needs wrk
# and pgbench, see bench/README.md). Not part of `make test`.
bench: $(STAMP)
	$(VPY) bench/all.py $(BENCH_ARGS)

# Ten minutes of mixed load across 50 tenants, some endpoints failing or slow;
# rewrites docs/soak.md with --write-docs (SOAK_ARGS). Not part of `make test` or CI.
soak: $(STAMP)
	$(VPY) bench/soak.py $(SOAK_ARGS)

lint: $(STAMP)
	$(VPY) -m ruff check . && $(VPY) -m ruff format --check . && $(VPY) -m mypy && \
	cd clients/python && ../../$(VPY) -m mypy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
