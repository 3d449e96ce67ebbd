#!/usr/bin/env bash
# Installs the Debian packages PAM builds and tests with (only those missing).
set -euo pipefail
pkgs=(cmake make gcc clang libclang-rt-14-dev libcmocka-dev libutf8proc-dev libjansson-dev liburing-dev libmicrohttpd-dev libhiredis-dev libssl-dev redis-server redis-tools pkg-config curl jq librsvg2-bin)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The server test drives PAM with the official openai npm client: Node.js and
# npm from Debian, unless the machine already has them.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
