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

# --- QEMU 10.0 beside the system's 7.2 -------------------------------------
# Debian 12's QEMU (7.2) stays the default; 10.0 comes from bookworm-backports, its five
# packages unpacked into .qemu/10.0 (nothing installed system-wide, no apt source added):
# GANGWAY_QEMU=$PWD/.qemu/10.0/usr/bin/qemu-system-x86_64 selects it.
qemu10=.qemu/10.0/usr/bin/qemu-system-x86_64
if [[ ! -x "$qemu10" ]] && [[ -z "${GANGWAY_NO_QEMU10:-}" ]]; then
  command -v apt-get >/dev/null || die "QEMU 10.0 needs apt-get (Debian) to fetch it; set GANGWAY_NO_QEMU10=1 to skip it (its tests then fail)"
  say "fetching QEMU 10.0 from bookworm-backports into .qemu/10.0"
  apt_dir=$PWD/.qemu/apt
  rm -rf "$apt_dir" .qemu/10.0.partial && mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs" .qemu/10.0.partial
  echo "deb http://deb.debian.org/debian bookworm-backports main" >"$apt_dir/sources.list"
  apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o APT::Sandbox::User=root -qq)
  apt-get "${apt_opts[@]}" update >/dev/null || die "apt-get update of bookworm-backports failed"
  (cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" download \
    qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports \
    qemu-utils/bookworm-backports seabios/bookworm-backports >/dev/null) || die "downloading QEMU 10.0 from bookworm-backports failed"
  for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" .qemu/10.0.partial || die "unpacking $deb failed"; done
  rm -rf .qemu/10.0 && mv .qemu/10.0.partial .qemu/10.0 && rm -rf "$apt_dir"
  "$qemu10" --version >/dev/null || die "the unpacked QEMU 10.0 does not run ($qemu10 --version)"
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
