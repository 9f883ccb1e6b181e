# The two commands a newcomer runs (see README.md):
#   make demo   - install everything into .venv/, then run the pipeline end to end on embedded defaults
#   make test   - install everything into .venv/, then run the whole test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# make demo SOURCE=kafka: the same flow from a Kafka topic (a local broker is started and stopped)
# make demo SCENARIO=chat: the chat scenario (conf/scenarios/chat/): text curated for a language model
SCENARIO ?= telemetry
SOURCE ?=
DEMO_SOURCE := $(if $(filter kafka,$(SOURCE)),telemetry_kafka,$(SOURCE))
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench clean check-java

install: $(STAMP)

check-java:
	@scripts/check_java.sh

# Re-installs only when the pinned dependencies change.
$(STAMP): setup.cfg pyproject.toml scripts/build_horovod.sh lakehouse/data_docs_assets.py lakehouse/jvm_archive.py \
          lakehouse/local_fs.py $(wildcard lakehouse/jvm/*.java) | check-java
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" "setuptools>=68" wheel
	$(BIN)/python -m pip install --quiet -e ".[test,dev]"
	scripts/build_horovod.sh $(BIN)/python
	$(BIN)/python -m lakehouse.data_docs_assets
	$(BIN)/python -m lakehouse.jvm_archive
	$(BIN)/python -m pip check
	@touch $(STAMP)

demo: install
	$(BIN)/lakehouse --scenario $(SCENARIO) demo $(if $(DEMO_SOURCE),--source $(DEMO_SOURCE))

# The linter first (pyproject.toml configures it), then every test.
test: install lint
	scripts/install_browser.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check --quiet .

bench: install
	$(BIN)/python bench/bronze_throughput.py
	$(BIN)/python bench/silver_overhead.py
	$(BIN)/python bench/kafka_ingest.py

clean:
	rm -rf data/ spark-warehouse/ .pytest_cache/ build/ *.egg-info
