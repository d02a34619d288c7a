#!/usr/bin/env bash
# The one test command, for developers and CI alike (CI runs it as root with CI=true).
# Installs the system tools the integration tests use, then checks formatting, lints, and runs
# every test. Under CI=true a test whose tool or privilege is missing fails instead of skipping.
set -euo pipefail

cd "$(dirname "$0")/.."
export CI="${CI:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# Debian packages the tests need:
#   golang-go + golang-github-containerd-stargz-snapshotter-dev: the reference Go estargz package
#     the Go helper (tests/gohelper) builds against, offline;
#   skopeo, umoci: other OCI tools that must accept our images;
#   tar, gzip, pigz, zstd: extracting and compressing layers as users do;
#   attr (getfattr), jq: inspecting results by hand when a test fails;
#   erofs-utils: the EROFS work (mkfs/fsck/dump.erofs); ca-certificates: fetching crates;
#   curl, librsvg2-bin: the cold-start benchmark's full pull and its PNG chart (`bench --quick`);
#   time (GNU time): the hostile-content tests' peak memory of a refused mount;
#   docker-registry (distribution 2.8), apache2-utils (htpasswd -B), openssl: the registry tests
#     run the real registry anonymous, with basic auth and with token auth (certs and JWTs by openssl);
#   containerd (1.6, with ctr), runc, stargz-snapshotter (ctr-remote), busybox-static: the
#     snapshotter tests run a private containerd with `lazypull snapshotter` as its proxy plugin,
#     pull through CRI and `ctr-remote images rpull`, and run busybox containers with runc;
#   g++: libfuzzer-sys compiles libFuzzer (C++) for the fuzz smoke (scripts/fuzz.sh).
PACKAGES=(
    golang-go golang-github-containerd-stargz-snapshotter-dev
    skopeo umoci
    tar gzip pigz zstd
    attr jq erofs-utils ca-certificates
    curl librsvg2-bin time
    docker-registry apache2-utils openssl
    containerd runc stargz-snapshotter busybox-static
    g++
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "== installing ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    else
        echo "== not root: cannot install ${missing[*]}; tests needing them will skip (fail under CI=true)"
    fi
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test (CI=${CI:-unset})"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --all-targets 2>&1 | tee "$log"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# A short libFuzzer run of every parser from its seeds (docs/reliability.md); fails on any crash.
# Its instrumented build lives under the main target dir so CI keeps one tree.
echo "== fuzz smoke"
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" scripts/fuzz.sh smoke

# One closing line over every test binary, so the last line a reader sees is the real total and
# not the count of the last (possibly empty) doc-test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "summary: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
