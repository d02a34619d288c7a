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
    layout_from_layer "$1" "$1" application/vnd.oci.image.layer.v1.tar "$2"
}

# gzip_layout_from_tar_gz TAR TAR_GZ OUT_DIR: the same with the gzip blob as the layer (a normal
# image, as a registry would hold it).
gzip_layout_from_tar_gz() {
    layout_from_layer "$1" "$2" application/vnd.oci.image.layer.v1.tar+gzip "$3"
}

# layout_from_layer TAR BLOB MEDIA_TYPE OUT_DIR: a one-layer OCI layout whose layer is BLOB (the
# diffID is TAR's digest).
layout_from_layer() {
    python3 - "$1" "$2" "$3" "$4" <<'PY'
import hashlib, json, os, shutil, sys
tar, blob, media, out = sys.argv[1:5]
blobs = os.path.join(out, "blobs", "sha256"); os.makedirs(blobs)
def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
    return h.hexdigest()
def put(data=None, path=None):
    if path:
        d = digest(path); shutil.copy(path, os.path.join(blobs, d)); return d, os.path.getsize(path)
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data); return d, len(data)
diff_id = digest(tar)
ld, ls = put(path=blob)
cfg = json.dumps({"architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]}}).encode()
cd, cs = put(cfg)
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": cs},
    "layers": [{"mediaType": media, "digest": "sha256:" + ld, "size": ls}]}).encode()
md, ms = put(man)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "b"}}]},
    open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}

# replace_between_markers FILE NAME TEXT: put TEXT between `<!-- NAME:begin -->` and
# `<!-- NAME:end -->` in FILE (appended with the markers when they are missing).
replace_between_markers() {
    python3 - "$1" "$2" "$3" <<'PY'
import re, sys
path, name, table = sys.argv[1:4]
text = open(path).read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
new = begin + "\n" + table.rstrip("\n") + "\n" + end
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: new, text, flags=re.S)
else:
    text = text + "\n" + new + "\n"
open(path, "w").write(text)
PY
    echo "updated $1 ($2)" >&2
}
