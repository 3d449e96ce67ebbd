#!/usr/bin/env bash
# Installs the Debian packages PAM builds and tests with (only those missing).
set -euo pipefail
pkgs=(cmake make gcc clang libclang-rt-14-dev libcmocka-dev libutf8proc-dev libjansson-dev libmicrohttpd-dev pkg-config curl nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
