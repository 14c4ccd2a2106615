#!/usr/bin/env bash
# picoquic (C), an independent QUIC implementation: builds picoquicdemo from the
# picoquic and picotls sources vendored in the aiopquic sdist. Idempotent; the build
# is cached under $NETCONN_PEERS_DIR (default /opt/netconn-peers), outside the clone.
set -euo pipefail

version=0.6.1
peers_dir=${NETCONN_PEERS_DIR:-/opt/netconn-peers}
prefix="$peers_dir/picoquic-aiopquic-$version"
binary="$prefix/bin/picoquicdemo"

if [ -x "$binary" ]; then
  echo "picoquic: cached at $binary"
  exit 0
fi

deps=(cmake build-essential libssl-dev pkg-config)
missing=()
for p in "${deps[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# pip: the project's virtualenv when bootstrap made one (Debian's python3 may lack pip).
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
jobs=$(nproc 2>/dev/null || echo 2)
work=$(mktemp -d "${TMPDIR:-/tmp}/picoquic-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The wheels need Python >= 3.12; the sdist carries the C sources for any Python
# (its build tools may come as wheels: only the sdist itself is wanted).
"$python" -m pip download -q --no-deps --no-binary aiopquic --ignore-requires-python \
  -d "$work" "aiopquic==$version"
tar -xzf "$work"/aiopquic-"$version".tar.gz -C "$work"
src="$work/aiopquic-$version/third_party"
[ -d "$src/picotls" ] && [ -d "$src/picoquic" ] || {
  echo "picoquic: unexpected sdist layout under $src" >&2
  exit 1
}

cmake -S "$src/picotls" -B "$work/picotls-build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DWITH_FUSION=OFF >/dev/null
cmake --build "$work/picotls-build" -j "$jobs" \
  --target picotls-core picotls-openssl picotls-minicrypto >/dev/null

ptls="$work/picotls-build"
cmake -S "$src/picoquic" -B "$work/picoquic-build" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_DEMO=ON -DBUILD_HTTP=ON -DPICOQUIC_FETCH_PTLS=OFF -DPTLS_WITH_FUSION=OFF \
  -Dpicoquic_BUILD_TESTS=OFF \
  -DPTLS_INCLUDE_DIR="$src/picotls/include" \
  -DPTLS_CORE_LIBRARY="$ptls/libpicotls-core.a" \
  -DPTLS_OPENSSL_LIBRARY="$ptls/libpicotls-openssl.a" \
  -DPTLS_MINICRYPTO_LIBRARY="$ptls/libpicotls-minicrypto.a" >/dev/null
cmake --build "$work/picoquic-build" -j "$jobs" --target picoquicdemo >/dev/null

# Install atomically so a half-finished build is never taken for a cached one.
mkdir -p "$peers_dir"
staging=$(mktemp -d "$peers_dir/.picoquic.XXXXXX")
mkdir -p "$staging/bin"
cp "$work/picoquic-build/picoquicdemo" "$staging/bin/picoquicdemo"
rm -rf "$prefix"
mv "$staging" "$prefix"
echo "picoquic: built $binary"
