#!/usr/bin/env bash
# Installs what pgmesh's control plane and its tests need on a fresh Debian machine,
# idempotently, from apt:
#  - etcd-server, etcd-client: the lease store (3.4 on Debian 12) and etcdctl, driven by
#    src/testkit/etcd.rs;
#  - protobuf-compiler: protoc, which the `etcd-client` crate's build script runs, so it must
#    exist before cargo builds anything;
#  - prometheus: the scraper behind src/testkit/prometheus.rs (and promtool for the rules).
# Prints nothing but progress; exits non-zero with the reason on failure.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

want=(etcd-server etcd-client protobuf-compiler libprotobuf-dev prometheus)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-control: apt-get install ${missing[*]}"
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages start system services (etcd on 2379/2380, prometheus on 9090) that pgmesh does
# not use; stop and disable them so they hold no ports or memory. Without systemd (a
# container) there is nothing running to stop.
for svc in etcd prometheus; do
  as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
for bin in /usr/bin/etcd /usr/bin/etcdctl /usr/bin/protoc /usr/bin/prometheus; do
  [ -x "$bin" ] || { echo "install-control: $bin missing after install" >&2; exit 1; }
done
