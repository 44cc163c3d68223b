# Every target does its own set-up: a fresh clone needs only Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: man test test-long test-fast demo soak soak-sim soak-large stability bench bench-failover bench-nic bench-mirror bench-scale lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# the benchmarks' own tools (py-spy), on top of the test set-up
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check vigil tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	PYTHONHASHSEED=0 $(BIN)/python -m pytest -q --durations=15 -m "not long"

# The slow cases left out of `make test` (floods, a rolling key rotation, a fresh pip install,
# system tests whose decision a simulation or another system test checks too: each names its
# kin in make test), some 5 minutes.
test-long: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/python -m pytest -q --durations=15 -m long

# The pure core and the simulation only: an answer in about a minute.
test-fast: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/python -m pytest -q tests/unit tests/sim

demo: $(STAMP)
	$(BIN)/python -m vigil.demo

# The long simulation run: many more examples and steps than `make test` on 2 to 9 nodes
# (about 20 to 40 minutes on two cores; the teeth that need it are listed in
# docs/protocol.md). `make soak-large` runs 16- and 32-node clusters, which cost a minute or
# more per example: it checks that the protocol scales, not the teeth. Then the stability run
# (below): the default timings must survive 10 minutes of saturated cores.
soak: soak-sim stability

soak-sim: $(STAMP)
	VIGIL_SIM_EXAMPLES=400 VIGIL_SIM_STEPS=100 VIGIL_SIM_TIMEOUT=14400 \
		PYTHONHASHSEED=0 $(BIN)/python -m pytest -q tests/sim/test_simulation.py \
		-p no:cacheprovider --timeout=14400 -k TestClusterSimulation

soak-large: $(STAMP)
	VIGIL_SIM_EXAMPLES=40 VIGIL_SIM_STEPS=60 VIGIL_SIM_LARGE=16,32 VIGIL_SIM_LARGE_ONLY=1 \
		VIGIL_SIM_TIMEOUT=14400 PYTHONHASHSEED=0 $(BIN)/python -m pytest -q \
		tests/sim/test_simulation.py -p no:cacheprovider --timeout=14400 -k TestClusterSimulation

# 10 minutes with every core saturated: no transition, no fence (docs/benchmarks.md); then
# 10 more with one node powered off, where each survivor's lease rests on the other alone;
# needs root and network namespaces
stability: $(STAMP)
	$(BIN)/python -m bench.stability --minutes 10 --keep-logs stability-logs --write
	$(BIN)/python -m bench.stability --minutes 10 --down n3 --keep-logs stability-logs --write

bench: $(STAMP)
	$(BIN)/python -m bench.transition_bench --write

# Failover of a real service on the namespace cluster, Vigil and keepalived (as root): a
# short version, 3 runs of each case, some 10 to 15 minutes (docs/benchmarks.md: the long one).
bench-failover: $(STAMP)
	$(BIN)/python -m bench.failover_bench --runs 3 --keepalived

# an address moving to the node's other NIC when its cable is pulled (root, namespaces)
bench-nic: $(STAMP)
	$(BIN)/python -m bench.nic_failover --runs 40

# mirrored data: replication throughput, the standbys' lag under a steady writer and the
# data lost at a power-off, on the namespace cluster (root, namespaces, btrfs; some 5 minutes)
bench-mirror: $(STAMP)
	$(BIN)/python -m bench.mirror

# Many real daemons on 127.0.0.1 (as root): formation, idle CPU and memory, 10 minutes without a
# spurious transition, the master's SIGKILL, a py-spy profile (docs/benchmarks.md, "Scale"):
# 3 daemons with 50 resources, then 32 with 128; some 15 minutes
bench-scale: $(BENCH_STAMP)
	$(BIN)/python -m bench.scale --nodes 3 --resources 50 --write
	$(BIN)/python -m bench.scale --nodes 32 --resources 128 --calm 10 --profile n02 --write

# vigil(1) from the click commands; shipped by `pip install` under share/man/man1 (a unit test
# fails when the committed page is stale)
man: $(STAMP)
	env -u VIGIL_CONFIG $(BIN)/python -m vigil.cli.manpage man/vigil.1

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
