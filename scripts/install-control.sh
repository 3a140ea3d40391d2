#!/usr/bin/env bash
# Installs what pgmesh's control plane and its tests need on a fresh Debian machine,
# idempotently, from apt:
#  - etcd-server, etcd-client: the lease store (3.4 on Debian 12) and etcdctl, driven by
#    src/testkit/etcd.rs;
#  - protobuf-compiler: protoc, which the `etcd-client` crate's build script runs, so it must
#    exist before cargo builds anything;
#  - prometheus: the scraper behind src/testkit/prometheus.rs (and promtool for the rules);
#  - the traffic layers the agent drives and its tests start for real: haproxy, pgbouncer,
#    knot (+ knot-dnsutils for kdig) as the RFC 2136 DNS server, prometheus-alertmanager;
#  - faketime: libfaketime, which shifts one node's clock in tests/clock_skew_live.rs and
#    the lab's clock-skew drill (src/testkit/faketime.rs);
#  - docker-compose: no container runs here, but `docker-compose config` checks the
#    top-level docker-compose.yml (tests/compose_config.rs).
# Prints nothing but progress; exits non-zero with the reason on failure.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

want=(etcd-server etcd-client protobuf-compiler libprotobuf-dev prometheus
      haproxy pgbouncer knot knot-dnsutils prometheus-alertmanager docker-compose faketime)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-control: apt-get install ${missing[*]}"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system services (etcd on 2379/2380, prometheus on 9090, haproxy,
# pgbouncer on 6432, knot on 53, alertmanager on 9093) that pgmesh does not use; stop and
# disable them so they hold no ports or memory. Without systemd (a container) there is
# nothing running to stop.
for svc in etcd prometheus haproxy pgbouncer knot prometheus-alertmanager; do
  as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
for bin in /usr/bin/etcd /usr/bin/etcdctl /usr/bin/protoc /usr/bin/prometheus \
  /usr/sbin/haproxy /usr/sbin/pgbouncer /usr/sbin/knotd /usr/bin/kdig /usr/bin/prometheus-alertmanager /usr/bin/docker-compose \
  /usr/bin/faketime; do
  [ -x "$bin" ] || { echo "install-control: $bin missing after install" >&2; exit 1; }
done
