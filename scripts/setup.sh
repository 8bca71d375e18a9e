#!/usr/bin/env bash
# Idempotent set-up: installs what is missing, builds the test guest, and says
# clearly what it could not do. Safe to run before every demo and test run.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

# --- Debian packages -------------------------------------------------------
# command-or-file -> package that provides it
declare -A need=(
  [nats-server]=nats-server
  [qemu-system-x86_64]=qemu-system-x86
  [qemu-img]=qemu-utils
  [gcc]=gcc
  [make]=make
  [/usr/lib/gcc/x86_64-linux-gnu/12/32/crtbegin.o]=gcc-multilib
  [/bin/busybox]=busybox-static
)
missing=()
for what in "${!need[@]}"; do
  if [[ "$what" == /* ]]; then [[ -e "$what" ]] || missing+=("${need[$what]}")
  else command -v "$what" >/dev/null 2>&1 || missing+=("${need[$what]}"); fi
done
# The Debian kernel is the realistic guest (W2); only needed by those tests.
if ! ls /boot/vmlinuz-* >/dev/null 2>&1; then missing+=(linux-image-amd64); fi

if ((${#missing[@]})); then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs >/dev/null || die "apt-get install $pkgs failed"
  else
    die "missing Debian packages: $pkgs (run as root, or: sudo apt-get install $pkgs)"
  fi
fi

# --- npm packages ----------------------------------------------------------
if [[ ! -d node_modules ]] || [[ package.json -nt node_modules/.package-lock.json ]] || \
   [[ -f package-lock.json && package-lock.json -nt node_modules/.package-lock.json ]]; then
  say "installing npm packages"
  if [[ -f package-lock.json ]]; then npm ci --no-audit --no-fund --loglevel=error >&2
  else npm install --no-audit --no-fund --loglevel=error >&2; fi
fi

# --- test guest --------------------------------------------------------------
if [[ -f guest/Makefile ]]; then
  make -s -C guest >&2 || die "building the test guest failed (guest/Makefile)"
fi
exit 0
