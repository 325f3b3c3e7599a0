# networking-vcenter: every set-up step a fresh Debian bookworm machine needs.
#   make demo        the end-to-end demo (MODE=real for MariaDB + RabbitMQ)
#   make test        the whole test suite (what CI runs)
# Each step is skipped when already done.

SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
NOVA_VENV ?= $(CURDIR)/.venv-nova
BUILD := $(CURDIR)/tools/vcsim/build
WSDL := $(BUILD)/wsdl
MODE ?= embedded
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)
APT_PACKAGES := python3-venv python3-dev build-essential golang-go golang-github-vmware-govmomi-dev patch mariadb-server rabbitmq-server \
  redis-server etcd-server

export NOVA_VENV

.PHONY: all deps apt venv vcsim nova wsdl test unit functional e2e demo sample-config check-sample clean

all: test

apt: .stamp-apt
# Again after a change of APT_PACKAGES (the recipe installs only what is
# missing).
.stamp-apt: Makefile
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml upper-constraints.txt | apt
	@# A venv left broken by an interrupted run is made again.
	$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); python3 -m venv $(VENV); }
	@# (uwsgi compiles from source: build-essential and python3-dev above)
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -c upper-constraints.txt -e '.[test]' 2>&1 \
	  | { grep -v '^WARNING: Location' || true; }
	@# (redis, etcd3gw: the clients of tooz's backends that the race runs on)
	$(PY) -c 'import neutron, networking_vcenter, pyVmomi, tooz, redis, etcd3gw'
	test -x $(VENV)/bin/uwsgi
	@touch $@

vcsim: apt
	bash tools/vcsim/build.sh

nova: $(NOVA_VENV)/.stamp
$(NOVA_VENV)/.stamp:
	bash tools/nova/setup-venv.sh
	@touch $@

wsdl: nova
	bash tools/vcsim/assemble-wsdl.sh $(WSDL)

deps: apt venv vcsim nova wsdl

sample-config: venv
	$(VENV)/bin/oslo-config-generator --config-file etc/oslo-config-generator/networking-vcenter.conf

check-sample: venv
	@tmp=$$(mktemp); $(VENV)/bin/oslo-config-generator --config-file etc/oslo-config-generator/networking-vcenter.conf --output-file $$tmp; \
	diff -u etc/ml2_conf_vcenter.ini.sample $$tmp >/dev/null || { echo "etc/ml2_conf_vcenter.ini.sample is stale: run 'make sample-config'"; rm -f $$tmp; exit 1; }; rm -f $$tmp

unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

functional: deps
	$(PY) -m pytest tests/simulator tests/functional -q -p no:warnings $(PYTEST_ARGS)

e2e: deps
	$(PY) -m pytest tests/e2e -q -p no:warnings $(PYTEST_ARGS)

# Two pytest-xdist workers, a module's test functions or a test class per work
# unit, in the order tests/conftest.py gives them; tests marked serial run
# while no other worker runs a test.  TEST_WORKERS=0: one process.
test: deps check-sample
	$(PY) -m pytest tests -q -p no:warnings -p no:cacheprovider --durations=30 $(XDIST) $(PYTEST_ARGS)

demo: deps
	$(PY) tools/demo.py --mode $(MODE)

clean:
	rm -rf $(BUILD) .stamp-apt .work
