#!/usr/bin/env bash
# EROFS conversion time and size, side by side on one machine in one run:
#   (a) lazypull convert --format erofs (release build)
#   (b) what a user would script: tar -xf into a directory, mkfs.erofs, zstd -T2 -3
#   (c) zstd -T2 -3 alone on (b)'s image (the compressor's limit)
# on one realistic layer (default: a tar of /usr/lib/go-*, ~330 MB of binaries and source, as in
# benches/estargz_vs_reference.sh). Targets: lazypull time ≤ 2× (c)'s, lazypull blob ≤ 5% larger
# than (c)'s output. Writes a table into docs/benchmarks.md between the markers
# `<!-- erofs-convert:begin -->` and `<!-- erofs-convert:end -->`.
#
# Usage: sudo benches/erofs_vs_mkfs.sh [SOURCE_DIR]   (run from the repository root, as root:
# tar keeps numeric owners and modes as the converter does)
# Needs: erofs-utils (mkfs.erofs), zstd, tar, python3. LAZYPULL=path benchmarks a given binary
# instead of building one.
set -euo pipefail

# shellcheck source=benches/common.sh
source "$(dirname "$0")/common.sh"

root=$(cd "$(dirname "$0")/.." && pwd)
src_dir=${1:-$(ls -d /usr/lib/go-* 2>/dev/null | head -n1)}
[ -d "$src_dir" ] || { echo "no source directory (give one as argument)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "run as root: tar -p --numeric-owner must keep owners" >&2; exit 1; }
for tool in mkfs.erofs zstd tar python3; do
    command -v "$tool" > /dev/null || { echo "$tool is not installed (see scripts/test.sh)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target=${CARGO_TARGET_DIR:-$root/target}
# A fixed UUID (and -T0) so mkfs.erofs output is reproducible from run to run.
uuid=6c617a79-7075-6c6c-2d65-726f66730001

if [ -z "${LAZYPULL:-}" ]; then
    echo "building lazypull (release)" >&2
    cargo build --release --quiet --manifest-path "$root/Cargo.toml"
    LAZYPULL=$target/release/lazypull
fi

echo "making the layer from $src_dir" >&2
make_layer_tar "$src_dir" "$work/layer.tar"
size=$(stat -c %s "$work/layer.tar")

layout_from_tar "$work/layer.tar" "$work/in"

now() { date +%s.%N; }
sync

echo "(a) lazypull convert --format erofs" >&2
t0=$(now)
"$LAZYPULL" convert --no-progress --format erofs --json "oci:$work/in:b" "oci:$work/out:b" \
    > "$work/report.json"
t1=$(now)
lp_size=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["layers"][0]["size"])' "$work/report.json")
lp_image=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["layers"][0]["uncompressedSize"])' "$work/report.json")
rm -rf "$work/out"

echo "(b) tar -xf, mkfs.erofs, zstd -T2 -3" >&2
mkdir "$work/tree"
t2=$(now)
tar -xf "$work/layer.tar" -C "$work/tree" --numeric-owner -p
t3=$(now)
mkfs.erofs --quiet -T0 -U "$uuid" "$work/mkfs.img" "$work/tree" > /dev/null
t4=$(now)
zstd -q -T2 -3 -f "$work/mkfs.img" -o "$work/pipeline.zst"
t5=$(now)
rm -rf "$work/tree" "$work/pipeline.zst"
mkfs_image=$(stat -c %s "$work/mkfs.img")

echo "(c) zstd -T2 -3 alone" >&2
t6=$(now)
zstd -q -T2 -3 -f "$work/mkfs.img" -o "$work/alone.zst"
t7=$(now)
zstd_size=$(stat -c %s "$work/alone.zst")

row=$(python3 - "$size" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" "$t6" "$t7" "$lp_size" "$zstd_size" "$lp_image" "$mkfs_image" <<'EOF'
import sys
size = int(sys.argv[1])
t0, t1, t2, t3, t4, t5, t6, t7 = map(float, sys.argv[2:10])
lp, zs, lp_img, mkfs_img = map(int, sys.argv[10:14])
mb = size / 1e6
lp_t, untar_t, mkfs_t, zpipe_t, z_t = t1 - t0, t3 - t2, t4 - t3, t5 - t4, t7 - t6
pipe_t = untar_t + mkfs_t + zpipe_t
ok = lambda good: "✓" if good else "✗"
print(f"| {mb/lp_t:.1f} MB/s ({lp_t:.1f} s) | {mb/pipe_t:.1f} MB/s ({pipe_t:.1f} s: "
      f"untar {untar_t:.1f} + mkfs {mkfs_t:.1f} + zstd {zpipe_t:.1f}) | {mb/z_t:.1f} MB/s ({z_t:.1f} s) | "
      f"**{pipe_t/lp_t:.2f}×** | {lp_t/z_t:.2f}× {ok(lp_t <= 2 * z_t)} | "
      f"{lp/1e6:.1f} MB ({lp_img/1e6:.1f} MB image) | {zs/1e6:.1f} MB ({mkfs_img/1e6:.1f} MB image) | "
      f"{(lp/zs-1)*100:+.1f}% {ok(lp <= 1.05 * zs)} |")
EOF
)
echo "$row" >&2

mkfs_version=$(mkfs.erofs 2>&1 | tail -n1 || true)
table="Layer: \`$(basename "$src_dir")\` tarred, $(python3 -c "print(f'{$size/1e6:.0f}')") MB uncompressed;
lazypull at its defaults (zstd level 3, 1 MiB chunks, all cores); \`mkfs.erofs -T0 -U <fixed>\`
($mkfs_version); machine: $(nproc) cores; $(date -u +%Y-%m-%d). Throughput is
uncompressed tar bytes per second of wall time. Targets: lazypull time ≤ 2× zstd alone, blob
≤ +5% against zstd of the mkfs image.

| lazypull | untar + mkfs.erofs + \`zstd -T2 -3\` | \`zstd -T2 -3\` alone | lazypull speed-up vs pipeline | lazypull time / zstd time | lazypull blob | zstd of mkfs image | size vs zstd |
|---|---|---|---|---|---|---|---|
$row
"
replace_between_markers "$root/docs/benchmarks.md" erofs-convert "$table"
