#!/usr/bin/env bash
# Conversion throughput, side by side on one machine in one run:
#   lazypull convert  vs  the reference Go estargz.Build  vs  pigz -p2 (the compressor's limit)
# on one realistic layer (default: a tar of /usr/lib/go-*, ~330 MB of binaries and source), at
# gzip levels 1, 6 and 9, same chunk size. Writes a table into docs/benchmarks.md between the
# markers `<!-- estargz-convert:begin -->` and `<!-- estargz-convert:end -->`.
#
# Usage: benches/estargz_vs_reference.sh [SOURCE_DIR]   (run from the repository root)
# Needs: golang-go, golang-github-containerd-stargz-snapshotter-dev, pigz, python3.
set -euo pipefail

# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

root=$(cd "$(dirname "$0")/.." && pwd)
src_dir=${1:-$(ls -d /usr/lib/go-* 2>/dev/null | head -n1)}
[ -d "$src_dir" ] || { echo "no source directory (give one as argument)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target=${CARGO_TARGET_DIR:-$root/target}

echo "building lazypull (release) and the Go helper" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
lazypull=$target/release/lazypull
bash "$root/tests/gohelper/build.sh" "$work/gohelper"

echo "making the layer from $src_dir" >&2
make_layer_tar "$src_dir" "$work/layer.tar"
size=$(stat -c %s "$work/layer.tar")

layout_from_tar "$work/layer.tar" "$work/in"

now() { date +%s.%N; }
rows=""
for level in 1 6 9; do
    rm -rf "$work/out"
    t0=$(now); "$lazypull" convert --no-progress --compression-level "$level" --json \
        "oci:$work/in:b" "oci:$work/out:b" > "$work/report.json" 2>/dev/null; t1=$(now)
    lp_size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["layers"][0]["size"])' "$work/report.json")
    t2=$(now); "$work/gohelper" build "$work/layer.tar" "$work/ref.blob" --level "$level" > /dev/null; t3=$(now)
    ref_size=$(stat -c %s "$work/ref.blob")
    t4=$(now); pigz -p2 -"$level" -c "$work/layer.tar" > "$work/pigz.gz"; t5=$(now)
    pigz_size=$(stat -c %s "$work/pigz.gz")
    row=$(python3 - "$size" "$level" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$lp_size" "$ref_size" "$pigz_size" <<'EOF'
import sys
size, level = int(sys.argv[1]), sys.argv[2]
t0, t1, t2, t3, t4, t5 = map(float, sys.argv[3:9])
lp, ref, pz = map(int, sys.argv[9:12])
mb = size / 1e6
lp_t, ref_t, pz_t = t1 - t0, t3 - t2, t5 - t4
print(f"| {level} | {mb/lp_t:.1f} MB/s ({lp_t:.1f} s) | {mb/ref_t:.1f} MB/s ({ref_t:.1f} s) | "
      f"{mb/pz_t:.1f} MB/s ({pz_t:.1f} s) | **{ref_t/lp_t:.2f}×** | {lp_t/pz_t:.2f}× | "
      f"{lp/1e6:.1f} MB | {ref/1e6:.1f} MB | {(lp/ref-1)*100:+.1f}% |")
EOF
)
    echo "$row" >&2
    rows="$rows$row"$'\n'
done

table="Layer: \`$(basename "$src_dir")\` tarred, $(python3 -c "print(f'{$size/1e6:.0f}')") MB uncompressed; chunk size 4 MiB;
machine: $(nproc) cores; $(date -u +%Y-%m-%d). Throughput is uncompressed input bytes per second of wall time.

| level | lazypull | reference \`estargz.Build\` | \`pigz -p2\` | lazypull vs reference | lazypull time / pigz time | lazypull size | reference size | size vs reference |
|---|---|---|---|---|---|---|---|---|
$rows"
replace_between_markers "$root/docs/benchmarks.md" estargz-convert "$table"
