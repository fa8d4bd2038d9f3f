# Flotilla developer commands. `make cluster` runs a local 3-node cluster, `make test` runs
# every test; `make` alone lists the targets. Recipes that need more than a few lines live in
# scripts/ so they can be read, shellchecked and run on their own.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# One target dir per machine, outside the clone: a fresh CI clone reuses the RocksDB build
# (about 20 minutes clean on 2 cores) instead of starting over.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/flotilla/target

CARGO ?= cargo
# Extra arguments: `make test TEST_ARGS='-- --nocapture'`, `make sim SIM_ARGS='--seed 7'`,
# `make cluster NODE_ARGS='--config my.toml'` (appended to every node's command line).
TEST_ARGS ?=
SIM_ARGS ?=
NODE_ARGS ?=
# `make chaos CHAOS_MINUTES=3 CHAOS_ARGS='--seed 7'`.
CHAOS_MINUTES ?= 10
CHAOS_ARGS ?=
# `make powerloss POWERLOSS_CUTS=20 POWERLOSS_ARGS='--seed 7'`; the sync-disabled run that must
# lose writes makes POWERLOSS_NOSYNC_CUTS whole-cluster cuts.
POWERLOSS_CUTS ?= 20
POWERLOSS_NOSYNC_CUTS ?= 3
POWERLOSS_ARGS ?=

# Empty when running as root, so the same recipe works in containers and on laptops.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# RUSTFLAGS (and its variants) would replace `--cfg tokio_unstable` from .cargo/config.toml,
# which turmoil needs to seed the scheduler: simulation runs would silently stop replaying.
# Nothing here sets them; warn if the caller's environment does.
ifneq ($(strip $(RUSTFLAGS)$(CARGO_ENCODED_RUSTFLAGS)$(CARGO_BUILD_RUSTFLAGS)),)
$(warning RUSTFLAGS/CARGO_ENCODED_RUSTFLAGS/CARGO_BUILD_RUSTFLAGS is set: it replaces --cfg tokio_unstable from .cargo/config.toml and breaks simulation determinism; unset it)
endif

RELEASE_DIR := $(CARGO_TARGET_DIR)/release

.PHONY: help deps build install-cli cluster cluster-bg stop test fmt lint sim chaos powerloss clean-data

# List the targets with their one-line descriptions (the `##` comments below).
help:
	@echo "Flotilla make targets (CARGO_TARGET_DIR=$(CARGO_TARGET_DIR)):"
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / { printf "  %-12s %s\n", $$1, $$2 }' $(firstword $(MAKEFILE_LIST))

# Check for cargo and install the missing system packages (apt); fast when nothing is missing.
deps: ## install missing build dependencies (libclang-dev, g++, pkg-config, make)
	@SUDO="$(SUDO)" CARGO="$(CARGO)" scripts/deps.sh

# Release profile only, and always the whole workspace with every target: cargo resolves
# features per selection of packages, and a different selection (say `-p flotilla-server`)
# changes librocksdb-sys's feature set and rebuilds RocksDB from scratch. Building exactly
# what `cargo test --release --workspace` builds keeps one RocksDB build per machine.
build: deps ## build `flotilla`, `flo` and every test (release)
	$(CARGO) build --release --workspace --all-targets

# Symlinks, so a later `make build` is picked up without reinstalling; INSTALL_DIR=dir overrides.
install-cli: build ## link `flo` and `flotilla` into ~/.cargo/bin (if on PATH) or /usr/local/bin
	@RELEASE_DIR="$(RELEASE_DIR)" scripts/install-cli.sh

# Foreground: Ctrl-C stops the three nodes; data in .flotilla/ is kept for the next run.
cluster: install-cli ## deps + build + install-cli, then run a 3-node cluster on 127.0.0.1
	scripts/cluster.sh $(if $(NODE_ARGS),-- $(NODE_ARGS))

# For scripted tests: returns once every node accepts client connections; `make stop` ends it.
cluster-bg: build ## start the 3-node cluster in the background (pids in .flotilla/pids)
	scripts/cluster.sh --background $(if $(NODE_ARGS),-- $(NODE_ARGS))

# Only a cluster started by `make cluster-bg`; a foreground one stops with Ctrl-C.
stop: ## stop the background cluster, if any
	@scripts/cluster.sh --stop

# Every workspace test in release mode, flotilla-simulation's seeded runs included.
test: build ## build, run all tests (cargo test --release --workspace), print a summary
	@CARGO="$(CARGO)" scripts/test.sh $(TEST_ARGS)

fmt: ## format every crate
	$(CARGO) fmt --all

# What CI should hold the tree to: rustfmt-clean and clippy-clean with warnings denied.
lint: deps ## cargo fmt --check and clippy -D warnings (release profile)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Seeds 1..SEEDS, one process each, two at a time: totals, violations per invariant and
# coverage counters (a point stuck at zero fails the sweep). One seed alone:
# `make sim SIM_ARGS='--seed 7 --trace'` (every failure prints its replay command).
SEEDS ?=
sim: build ## simulation: make sim SEEDS=1000 (sweep), or make sim SIM_ARGS='--seed 7'
	$(if $(SEEDS),$(RELEASE_DIR)/flotilla-sim sweep --seeds $(SEEDS) --require-coverage $(SIM_ARGS),$(RELEASE_DIR)/flotilla-sim $(SIM_ARGS))

# Five real nodes in network namespaces (needs root: `ip netns`; without root it runs process
# faults only and says so), rotating faults, then heal, drain and the simulation's checker.
# Data, logs and the history go to .flotilla/chaos/. Exit status 0 only for a clean run.
chaos: build ## real-process chaos test: make chaos CHAOS_MINUTES=10 [CHAOS_ARGS='--seed S']
	@DEPS_EXTRA=iproute2 SUDO="$(SUDO)" CARGO="$(CARGO)" scripts/deps.sh
	$(RELEASE_DIR)/flotilla-chaos --minutes $(CHAOS_MINUTES) $(CHAOS_ARGS)

# The chaos harness in power-loss mode (needs root: FUSE mounts through /dev/fuse, and `ip netns`):
# every node's data directory on a lazy filesystem that drops unsynced writes at a power cut;
# POWERLOSS_CUTS whole-cluster cuts (and minority cuts between them) under load must lose no
# acknowledged record. Then the same with fsync disabled on every node, which must lose some:
# the proof that the harness bites. Fails unless both verdicts are PASS. 9–13 minutes.
powerloss: build ## power-loss test: make powerloss POWERLOSS_CUTS=20 [POWERLOSS_ARGS='--seed S']
	@DEPS_EXTRA=iproute2 SUDO="$(SUDO)" CARGO="$(CARGO)" scripts/deps.sh
	$(SUDO) $(RELEASE_DIR)/flotilla-chaos --power-loss --cuts $(POWERLOSS_CUTS) --run-dir .flotilla/powerloss $(POWERLOSS_ARGS)
	$(SUDO) $(RELEASE_DIR)/flotilla-chaos --power-loss --unsafe-no-sync --cuts $(POWERLOSS_NOSYNC_CUTS) --run-dir .flotilla/powerloss-nosync $(POWERLOSS_ARGS)

# Refuses while a cluster still listens on the dev ports, so a running node never loses its data.
clean-data: ## stop the background cluster and delete .flotilla/ (data and logs)
	@scripts/cluster.sh --clean-data
