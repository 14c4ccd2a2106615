#!/usr/bin/env bash
# Caddy (Debian package), whose HTTP/3 server is quic-go: an independent QUIC peer.
# Idempotent. The Debian service is never started; tests run caddy in a folder of their own.
set -euo pipefail

if command -v caddy >/dev/null 2>&1; then
  echo "caddy: installed at $(command -v caddy)"
  exit 0
fi
sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq caddy >/dev/null
echo "caddy: installed at $(command -v caddy)"
