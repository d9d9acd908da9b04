# The two commands of the README: `make run` and `make test`. Everything they need is
# installed by them: the venv from constraints.txt, and Debian packages for the tests.

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
CONFIG ?= config/dev.yaml

.PHONY: run test test-fast setup system-deps lint typecheck pytest mutation bench lock clean compose-up compose-stop compose-down

# The service on the embedded defaults with the lab's Asterisk as its node (scripts/run-dev).
run: setup
	CONFIG=$(CONFIG) scripts/run-dev

test: setup system-deps lint typecheck pytest

# The edit loop's tier: no lab, no Docker, no browser, no fixed-duration test, no apt;
# PROVISIONER_TEST_TIER=fast makes whatever would start Asterisk, Kamailio, dockerd or sipp
# fail its test (tests/tier.py). `make test` stays the whole truth.
FAST_TIER = not lab and not docker and not browser and not slow
test-fast: setup
	PROVISIONER_TEST_TIER=fast $(BIN)/pytest -q -m "$(FAST_TIER)"

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,embedded]'
	touch $@

system-deps:
	scripts/install-system-deps

lint: setup
	$(BIN)/ruff check provisioner tests bench
	$(BIN)/ruff format --check provisioner tests bench

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

# The platform as a compose stack (asterisk-docker/compose.yaml): the SIP router, two
# Asterisk nodes (files and realtime), PostgreSQL and the service, images built from
# Debian alone (scripts/compose, which starts Docker's engine when none runs).
# compose-stop keeps the data for the next compose-up; compose-down removes it.
compose-up: setup system-deps
	scripts/compose up

compose-stop:
	scripts/compose stop

compose-down:
	scripts/compose down

# Mutation testing of domain/, render/ and service/assignments.py (scripts/mutation); slow,
# so not part of `make test`. Prints the score; `.venv/bin/mutmut browse` shows survivors.
mutation: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,embedded,mutation]'
	scripts/mutation

# The benchmark (bench/): two nodes behind the SIP router (bench/router.py), then the
# incremental apply against full reloads by node size. Needs the lab that `make test`
# builds; about 45 minutes; writes bench/results.{json,md}, bench/router-results.json,
# the PNG and the README's tables. BENCH_ARGS="--part router" (or moves, failover, realtime,
# billing) runs one part.
bench: setup
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,embedded,bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

# Re-pin every dependency to what a fresh install resolves today.
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet --disable-pip-version-check -e '.[test,embedded,bench]'
	$(VENV)-lock/bin/pip freeze --exclude-editable | grep -v '^provisioner' > constraints.txt
	rm -rf $(VENV)-lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
