#!/usr/bin/env bash
# Install what a one-node Slurm test cluster needs: Debian's slurmctld, slurmd, slurm-client and munge.
# Idempotent and quiet: does nothing when everything is installed (as any user); otherwise needs root
# and apt-get (Debian/Ubuntu). Exit status: 0 installed or already there, 1 install failed,
# 2 cannot install here (not root, or no apt-get).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-slurm: no apt-get here; install ${missing[*]} (Slurm and MUNGE) by other means" >&2
    exit 2
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-slurm: ${missing[*]} missing and not root: run as root (or: sudo $0)" >&2
    exit 2
fi

echo "install-slurm: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The package lists may be stale or absent on a fresh machine: update once, then install.
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install-slurm: apt-get failed" >&2
    exit 1
fi
