#!/usr/bin/env bash
# Conversion of a whole gzip image to eStargz, side by side on one machine in one run:
#   lazypull convert  vs  `ctr-remote images convert --estargz --oci` (stargz-snapshotter's
#   converter, Debian package stargz-snapshotter, inside a private containerd)
# on one realistic layer (default: a tar of /usr/lib/go-*), gzip level 9 (ctr-remote's default),
# chunk size 4 MiB for both. Both start from the same gzip OCI image; ctr-remote's time is the
# convert command alone (the import into containerd's content store is not counted).
# Writes a table into docs/benchmarks.md between `<!-- ctr-remote-convert:begin -->` and
# `<!-- ctr-remote-convert:end -->`.
#
# Usage (root): benches/estargz_vs_ctr_remote.sh [SOURCE_DIR]
# Needs: containerd, stargz-snapshotter (ctr-remote), pigz, python3.
set -euo pipefail

# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

root=$(cd "$(dirname "$0")/.." && pwd)
src_dir=${1:-$(ls -d /usr/lib/go-* 2>/dev/null | head -n1)}
[ -d "$src_dir" ] || { echo "no source directory (give one as argument)" >&2; exit 1; }
for tool in containerd ctr ctr-remote pigz python3; do
    command -v "$tool" > /dev/null || { echo "$tool is not installed" >&2; exit 1; }
done
work=$(mktemp -d)
containerd_pid=""
cleanup() {
    [ -n "$containerd_pid" ] && kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
target=${CARGO_TARGET_DIR:-$root/target}

echo "building lazypull (release)" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
lazypull=$target/release/lazypull

echo "making the gzip image from $src_dir" >&2
make_layer_tar "$src_dir" "$work/layer.tar"
size=$(stat -c %s "$work/layer.tar")
pigz -p2 -6 -n -c "$work/layer.tar" > "$work/layer.tar.gz"
gzip_layout_from_tar_gz "$work/layer.tar" "$work/layer.tar.gz" "$work/in"
(cd "$work/in" && tar -cf "$work/in.tar" .)

# A private containerd on its own socket and directories.
sock=$work/containerd.sock
cat > "$work/containerd.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
TOML
containerd --config "$work/containerd.toml" > "$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do ctr -a "$sock" version > /dev/null 2>&1 && break; sleep 0.1; done
ctr -a "$sock" -n bench images import --index-name bench/src:b "$work/in.tar" > /dev/null

now() { date +%s.%N; }
t0=$(now)
ctr-remote -a "$sock" -n bench images convert --oci --estargz \
    --estargz-compression-level 9 --estargz-chunk-size 4194304 bench/src:b bench/esgz:b > /dev/null
t1=$(now)
ctr -a "$sock" -n bench images export "$work/ctr.tar" bench/esgz:b
ctr_size=$(python3 - "$work/ctr.tar" <<'PY'
import json, sys, tarfile
t = tarfile.open(sys.argv[1])
def blob(d): return t.extractfile("blobs/" + d.replace(":", "/"))
idx = json.load(t.extractfile("index.json"))
desc = idx["manifests"][0]
m = json.load(blob(desc["digest"]))
while "manifests" in m:
    m = json.load(blob(m["manifests"][0]["digest"]))
print(sum(l["size"] for l in m["layers"]))
PY
)
t2=$(now)
"$lazypull" convert --no-progress --compression-level 9 --json "oci:$work/in:b" "oci:$work/out:b" \
    > "$work/report.json" 2>/dev/null
t3=$(now)
lp_size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["layers"][0]["size"])' "$work/report.json")

row=$(python3 - "$size" "$t0" "$t1" "$t2" "$t3" "$lp_size" "$ctr_size" <<'PY'
import sys
size = int(sys.argv[1]); t0, t1, t2, t3 = map(float, sys.argv[2:6]); lp, ctr = map(int, sys.argv[6:8])
mb = size / 1e6; c, l = t1 - t0, t3 - t2
print(f"| 9 | {mb/l:.1f} MB/s ({l:.1f} s) | {mb/c:.1f} MB/s ({c:.1f} s) | **{c/l:.2f}×** | "
      f"{lp/1e6:.1f} MB | {ctr/1e6:.1f} MB | {(lp/ctr-1)*100:+.1f}% |")
PY
)
echo "$row" >&2
table="Layer: \`$(basename "$src_dir")\` tarred, $(python3 -c "print(f'{$size/1e6:.0f}')") MB uncompressed, as a gzip
OCI image; chunk size 4 MiB; containerd $(containerd --version | awk '{print $3}'), ctr-remote from
Debian stargz-snapshotter; machine: $(nproc) cores; $(date -u +%F). Throughput is uncompressed
bytes per second of wall time.

| level | lazypull | \`ctr-remote images convert --estargz\` | lazypull vs ctr-remote | lazypull size | ctr-remote size | size vs ctr-remote |
|---|---|---|---|---|---|---|
$row"
replace_between_markers "$root/docs/benchmarks.md" ctr-remote-convert "$table"
