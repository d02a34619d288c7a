#!/usr/bin/env bash
# The cold-start benchmark: a thin wrapper around `lazypull bench` (see docs/benchmarks.md).
# Builds lazypull in release mode, installs what the full pull and the PNG chart need, and runs
# the benchmark as root with any arguments given, e.g.:
#   bash benches/coldstart.sh                                   # everything: ~70 min with containerd
#   bash benches/coldstart.sh --images python --runs 3 --network 100mbit:20ms
#   bash benches/coldstart.sh --quick                            # smoke test, ~1 min
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "coldstart.sh: run as root (FUSE, overlayfs, /proc mounts and chroot)" >&2
    exit 1
fi
need=()
for pkg in curl pigz librsvg2-bin; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
fi
cargo build --release --quiet
exec target/release/lazypull bench "$@"
