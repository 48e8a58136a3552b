#!/usr/bin/env bash
# Build TimescaleDB (Apache edition) from Debian's own source package and install it for the
# PostgreSQL server whose pg_config is given. Debian 12 has no TimescaleDB package; Debian 13
# ("trixie") has the source. apt runs with a private configuration (its own sources list, lists
# and cache under WORKDIR) so the machine's apt sources stay untouched; the mirror is taken from
# the machine's existing apt sources.
#   usage: build-timescaledb.sh WORKDIR PG_CONFIG
set -euo pipefail
work="$(realpath -m "$1")"; pg_config="$2"
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/parts" "$work/src"

# The first plain Debian archive URI among the machine's sources (deb822 or one-line style).
mirror="$(
  { grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -E 's/^\s*URIs:\s*//' | tr ' ' '\n'
    grep -hE '^\s*deb(-src)?\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | sed -E 's/\[[^]]*\]//' | awk '{print $2}'
  } | grep -E '/debian/?$' | grep -v -- '-security' | head -1
)" || true
[ -n "$mirror" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb-src [signed-by=$keyring] $mirror trixie main" > "$apt_dir/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/parts"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -q update >/dev/null
cd "$work/src"
rm -rf timescaledb-*/
apt-get "${apt_opts[@]}" -q source --download-only timescaledb >/dev/null
dsc="$(ls -t timescaledb_*.dsc | head -1)"
dpkg-source --no-check -x "$dsc" >/dev/null
srcdir="$(find . -maxdepth 1 -type d -name 'timescaledb-*' | head -1)"
cmake -S "$srcdir" -B "$srcdir/build" -DPG_CONFIG="$pg_config" -DAPACHE_ONLY=ON \
  -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
make -C "$srcdir/build" -j"$(nproc)" >/dev/null
make -C "$srcdir/build" install >/dev/null
echo "installed TimescaleDB from $dsc"
