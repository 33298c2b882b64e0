# The two commands of a fresh machine: `make serve` and `make test`. Both install what is missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install serve demo cluster-demo test test-fast lint browser-deps postgres-deps color-deps bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

serve: install
	$(VENV)/bin/pixmill serve

demo: install
	$(VENV)/bin/pixmill run src/pixmill/samples --pipeline "grayscale | blur(ksize=7)" --out demo-out

# PostgreSQL, an S3 endpoint, two web replicas and two dispatcher nodes, all on this machine.
cluster-demo: install postgres-deps
	$(PY) scripts/cluster_demo.py

browser-deps:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The PostgreSQL fixture runs Debian's initdb and pg_ctl from /usr/lib/postgresql in a cluster of its
# own; the package's default cluster, which the install may start, is stopped again.
postgres-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	  $$SUDO service postgresql stop >/dev/null 2>&1 || true; }

# A real CMYK profile for the colour tests: Ghostscript's SWOP profile, in Debian's libgs-common.
color-deps:
	@test -f /usr/share/color/icc/ghostscript/default_cmyk.icc || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq libgs-common >/dev/null; }

lint: install
	$(VENV)/bin/ruff check .

test: install browser-deps postgres-deps color-deps lint
	$(VENV)/bin/pytest -q

test-fast: install
	$(VENV)/bin/pytest -q -m "not mpi and not browser and not slow and not postgres"

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-out cluster-demo-out pixmill-data
