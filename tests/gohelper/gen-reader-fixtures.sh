#!/bin/sh
# Regenerate the reader's Go-built fixtures in converter/src/estargz/read/tests/testdata/:
# a small deterministic tar (made by Python's tarfile, so it carries PAX xattrs, a device and
# ownership that GNU tar run unprivileged cannot), built into gzip eStargz and zstd:chunked by
# the reference Go package, plus the reference reader's view of each (`gohelper list`).
#   usage: tests/gohelper/gen-reader-fixtures.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$root/converter/src/estargz/read/tests/testdata
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$root/tests/gohelper/build.sh" "$work/gohelper"
python3 - "$work/in.tar" <<'PY'
import io, sys, tarfile
def add(t, name, kind=tarfile.REGTYPE, data=b"", **kw):
    i = tarfile.TarInfo(name)
    i.type, i.size, i.mtime = kind, len(data), kw.pop("mtime", 1600000000)
    i.mode = kw.pop("mode", 0o644)
    for k, v in kw.items():
        setattr(i, k, v)
    t.addfile(i, io.BytesIO(data) if data else None)
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    add(t, "./", tarfile.DIRTYPE, mode=0o755)
    add(t, "./etc/", tarfile.DIRTYPE, mode=0o755)
    add(t, "./etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n", uname="root", gname="root")
    add(t, "./etc/hosts", data=b"127.0.0.1 localhost\n", pax_headers={"SCHILY.xattr.user.note": "hi\x01"})
    add(t, "./usr/", tarfile.DIRTYPE, mode=0o755)
    add(t, "./usr/bin/", tarfile.DIRTYPE, mode=0o755, uid=1000, gid=1000, uname="app", gname="app")
    add(t, "./usr/bin/tool", data=bytes((i * 7 + i // 251) % 256 for i in range(2500)), mode=0o4755, uid=1000, gid=1000)
    add(t, "./usr/bin/exact", data=b"x" * 2000, mode=0o755, uid=1000, gid=1000)
    add(t, "./usr/bin/empty", uid=1000, gid=1000)
    add(t, "./usr/bin/alias", tarfile.LNKTYPE, linkname="./usr/bin/tool", mode=0o4755, uid=1000, gid=1000)
    add(t, "./usr/bin/sh", tarfile.SYMTYPE, linkname="tool", mode=0o777)
    add(t, "./dev/", tarfile.DIRTYPE, mode=0o755)
    add(t, "./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
    add(t, "./dev/fifo", tarfile.FIFOTYPE, mode=0o600)
    add(t, "./tmp/", tarfile.DIRTYPE, mode=0o1777)
PY
printf '/usr/bin/tool\n/etc/hosts\n' > "$work/prefetch"
cd "$work"
export GOMAXPROCS=1 # Build compresses GOMAXPROCS slices: pin it for reproducible bytes.
./gohelper build in.tar "$out/go-gzip.stargz" --chunk-size 1000 > "$out/go-gzip.build.json"
./gohelper build in.tar "$out/go-zstd.stargz" --chunk-size 1000 --zstdchunked \
	--prefetch-list prefetch > "$out/go-zstd.build.json"
for v in gzip zstd; do
	./gohelper list "$out/go-$v.stargz" > "$out/go-$v.list.json"
	./gohelper verify "$out/go-$v.stargz" \
		"$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tocDigest"])' "$out/go-$v.build.json")"
done
