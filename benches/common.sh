# Shared by the end-to-end conversion benchmarks: the realistic layer and its OCI layout.
# Source this file; it defines functions only.

# make_layer_tar SRC_DIR OUT_TAR: a reproducible tar of SRC_DIR (sorted, fixed mtime and owner).
make_layer_tar() {
    tar -C "$(dirname "$1")" --sort=name --mtime=@1600000000 --owner=0 --group=0 --numeric-owner \
        -cf "$2" "$(basename "$1")"
}

# layout_from_tar TAR OUT_DIR: a one-layer OCI layout (tag `b`) around the uncompressed tar, so
# every contender starts from the same bytes.
layout_from_tar() {
    python3 - "$1" "$2" <<'PY'
import hashlib, json, os, shutil, sys
tar, out = sys.argv[1], sys.argv[2]
blobs = os.path.join(out, "blobs", "sha256"); os.makedirs(blobs)
def put(data=None, path=None):
    h = hashlib.sha256()
    if path:
        with open(path, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
        d = h.hexdigest(); shutil.copy(path, os.path.join(blobs, d)); return d, os.path.getsize(path)
    h.update(data); d = h.hexdigest()
    open(os.path.join(blobs, d), "wb").write(data); return d, len(data)
ld, ls = put(path=tar)
cfg = json.dumps({"architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + ld]}}).encode()
cd, cs = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": cs},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "sha256:" + ld, "size": ls}]}).encode()
md, ms = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "b"}}]},
    open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}
