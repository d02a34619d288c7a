#!/bin/sh
# Build the gohelper binary offline against the system Go packages (Debian's
# /usr/share/gocode), in GOPATH mode: no module download, no network.
#   usage: tests/gohelper/build.sh OUT_BINARY
set -eu
out=${1:?usage: build.sh OUT_BINARY}
case $out in /*) ;; *) out=$(pwd)/$out ;; esac
here=$(cd "$(dirname "$0")" && pwd)
gopath=$(mktemp -d)
trap 'chmod -R u+w "$gopath" 2>/dev/null; rm -rf "$gopath"' EXIT
# GOPATH mode builds packages that sit under a GOPATH src/ directory.
mkdir -p "$gopath/src/lazypull/gohelper"
cp "$here/main.go" "$gopath/src/lazypull/gohelper/"
cd "$gopath/src/lazypull/gohelper"
GO111MODULE=off GOPATH="$gopath:${GOCODE:-/usr/share/gocode}" GOPROXY=off GOFLAGS= \
	go build -o "$out" .
