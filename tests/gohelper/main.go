// Command gohelper drives the reference eStargz implementation
// (github.com/containerd/stargz-snapshotter/estargz) so lazypull's tests can
// check the Rust reader and writer against it. Build it with build.sh.
//
//	gohelper verify BLOB TOCDIGEST   check the TOC digest and every chunk digest
//	gohelper list BLOB               print the normalised tree as JSON
//	gohelper build IN_TAR OUT_BLOB [--chunk-size N] [--level N] [--zstdchunked] [--prefetch-list FILE]
//
// Every command prints JSON on stdout; failures go to stderr with exit status 1.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: gohelper verify|list|build ..."))
	}
	var out interface{}
	var err error
	args := os.Args[2:]
	switch os.Args[1] {
	case "verify":
		if len(args) != 2 {
			fail(errors.New("usage: gohelper verify BLOB TOCDIGEST"))
		}
		out, err = verify(args[0], args[1])
	case "list":
		if len(args) != 1 {
			fail(errors.New("usage: gohelper list BLOB"))
		}
		out, err = list(args[0])
	case "build":
		out, err = build(args)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gohelper:", err)
	os.Exit(1)
}

// openBlob opens a blob with every decompressor the reference knows, so the
// same command reads gzip eStargz, legacy stargz and zstd:chunked.
func openBlob(p string) (*estargz.Reader, *os.File, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	r, err := estargz.Open(io.NewSectionReader(f, 0, st.Size()),
		estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("open %s: %w", p, err)
	}
	return r, f, nil
}

type verifyResult struct {
	Entries int   `json:"entries"`
	Files   int   `json:"files"`
	Bytes   int64 `json:"bytes"`
}

func verify(blob, tocDigest string) (interface{}, error) {
	want, err := digest.Parse(tocDigest)
	if err != nil {
		return nil, err
	}
	r, f, err := openBlob(blob)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	v, err := r.VerifyTOC(want)
	if err != nil {
		return nil, err
	}
	var res verifyResult
	err = walk(r, func(name string, e *estargz.TOCEntry) error {
		res.Entries++
		if e.Type != "reg" || name != e.Name {
			return nil // hardlinks share their target's content
		}
		res.Files++
		n, err := verifyFile(r, v, e)
		res.Bytes += n
		return err
	})
	return res, err
}

// verifyFile reads the file chunk by chunk through OpenFile and checks each
// chunk against the verifier VerifyTOC returned: OpenFile itself does not.
func verifyFile(r *estargz.Reader, v estargz.TOCEntryVerifier, e *estargz.TOCEntry) (int64, error) {
	sr, err := r.OpenFile(e.Name)
	if err != nil {
		return 0, err
	}
	var total int64
	for off := int64(0); off < e.Size; {
		ce, ok := r.ChunkEntryForOffset(e.Name, off)
		if !ok {
			return total, fmt.Errorf("%s: no chunk at offset %d", e.Name, off)
		}
		if ce.ChunkOffset != off || ce.ChunkSize <= 0 {
			return total, fmt.Errorf("%s: chunk at %d has offset %d size %d", e.Name, off, ce.ChunkOffset, ce.ChunkSize)
		}
		cv, err := v.Verifier(ce)
		if err != nil {
			return total, fmt.Errorf("%s: chunk at %d: %w", e.Name, off, err)
		}
		n, err := io.Copy(cv, io.NewSectionReader(sr, ce.ChunkOffset, ce.ChunkSize))
		if err != nil {
			return total, fmt.Errorf("%s: chunk at %d: %w", e.Name, off, err)
		}
		if n != ce.ChunkSize || !cv.Verified() {
			return total, fmt.Errorf("%s: chunk at %d: digest mismatch", e.Name, off)
		}
		total += n
		off += n
	}
	if e.Digest != "" {
		d, err := digest.Parse(e.Digest)
		if err != nil {
			return total, err
		}
		fv := d.Verifier()
		if _, err := io.Copy(fv, io.NewSectionReader(sr, 0, e.Size)); err != nil {
			return total, err
		}
		if !fv.Verified() {
			return total, fmt.Errorf("%s: file digest mismatch", e.Name)
		}
	}
	return total, nil
}

// walk visits the root and every entry reachable from it, by normalised path,
// in sorted order. Landmarks and the TOC are skipped. A hardlink shows up as
// its target's entry under its own path (the reference resolves them).
func walk(r *estargz.Reader, fn func(name string, e *estargz.TOCEntry) error) error {
	root, ok := r.Lookup("")
	if !ok {
		return errors.New("no root directory")
	}
	type item struct {
		name string
		e    *estargz.TOCEntry
	}
	items := []item{{"", root}}
	for i := 0; i < len(items); i++ {
		parent := items[i]
		parent.e.ForeachChild(func(base string, e *estargz.TOCEntry) bool {
			name := path.Join(parent.name, base)
			if name == estargz.PrefetchLandmark || name == estargz.NoPrefetchLandmark || name == estargz.TOCTarName {
				return true
			}
			items = append(items, item{name, e})
			return true
		})
	}
	sort.Slice(items, func(a, b int) bool { return items[a].name < items[b].name })
	for _, it := range items {
		if err := fn(it.name, it.e); err != nil {
			return err
		}
	}
	return nil
}

type listEntry struct {
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Size     int64             `json:"size"`
	Mode     uint32            `json:"mode"`
	UID      int               `json:"uid"`
	GID      int               `json:"gid"`
	Mtime    int64             `json:"mtime"`
	LinkName string            `json:"linkName"`
	DevMajor int               `json:"devMajor"`
	DevMinor int               `json:"devMinor"`
	Xattrs   map[string][]byte `json:"xattrs"`
	Digest   string            `json:"digest"`
}

func list(blob string) (interface{}, error) {
	r, f, err := openBlob(blob)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := []listEntry{}
	err = walk(r, func(name string, e *estargz.TOCEntry) error {
		le := listEntry{
			Name:     name,
			Type:     e.Type,
			Size:     e.Size,
			Mode:     unixPerm(e.Stat().Mode()),
			UID:      e.UID,
			GID:      e.GID,
			LinkName: e.LinkName,
			DevMajor: e.DevMajor,
			DevMinor: e.DevMinor,
			Xattrs:   e.Xattrs,
			Digest:   e.Digest,
		}
		if le.Xattrs == nil {
			le.Xattrs = map[string][]byte{}
		}
		if !e.ModTime().IsZero() {
			le.Mtime = e.ModTime().Unix()
		}
		if name != e.Name {
			// Reached through a hardlink: report the link, not the target's payload.
			le.Type, le.LinkName, le.Size, le.Digest = "hardlink", e.Name, 0, ""
		}
		out = append(out, le)
		return nil
	})
	return out, err
}

// unixPerm turns Go's FileMode permission and special bits into unix mode bits.
func unixPerm(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

// zstdCompression pairs the zstd:chunked compressor and decompressor, which
// Build wants as one estargz.Compression.
type zstdCompression struct {
	*zstdchunked.Compressor
	*zstdchunked.Decompressor
}

type buildResult struct {
	TOCDigest string `json:"tocDigest"`
	DiffID    string `json:"diffID"`
	Size      int64  `json:"size"`
}

func build(args []string) (interface{}, error) {
	var pos []string
	var opts []estargz.Option
	level := -1
	zstdChunked := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "--") {
			pos = append(pos, a)
			continue
		}
		if a == "--zstdchunked" {
			zstdChunked = true
			continue
		}
		if i+1 >= len(args) {
			return nil, fmt.Errorf("%s needs a value", a)
		}
		val := args[i+1]
		i++
		switch a {
		case "--chunk-size":
			n, err := strconv.Atoi(val)
			if err != nil {
				return nil, fmt.Errorf("--chunk-size: %w", err)
			}
			opts = append(opts, estargz.WithChunkSize(n))
		case "--level":
			n, err := strconv.Atoi(val)
			if err != nil {
				return nil, fmt.Errorf("--level: %w", err)
			}
			level = n
		case "--prefetch-list":
			files, err := readLines(val)
			if err != nil {
				return nil, err
			}
			opts = append(opts, estargz.WithPrioritizedFiles(files))
		default:
			return nil, fmt.Errorf("unknown flag %s", a)
		}
	}
	if len(pos) != 2 {
		return nil, errors.New("usage: gohelper build IN_TAR OUT_BLOB [--chunk-size N] [--level N] [--zstdchunked] [--prefetch-list FILE]")
	}
	if zstdChunked {
		zl := zstd.SpeedDefault
		if level >= 0 {
			zl = zstd.EncoderLevelFromZstd(level)
		}
		opts = append(opts, estargz.WithCompression(zstdCompression{
			&zstdchunked.Compressor{CompressionLevel: zl}, new(zstdchunked.Decompressor)}))
	} else if level >= 0 {
		opts = append(opts, estargz.WithCompressionLevel(level))
	}

	in, err := os.Open(pos[0])
	if err != nil {
		return nil, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return nil, err
	}
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), opts...)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	defer blob.Close()
	out, err := os.Create(pos[1])
	if err != nil {
		return nil, err
	}
	n, err := io.Copy(out, blob)
	if err != nil {
		out.Close()
		return nil, err
	}
	if err := out.Close(); err != nil {
		return nil, err
	}
	// DiffID is only valid once the blob has been read to the end.
	return buildResult{TOCDigest: blob.TOCDigest().String(), DiffID: blob.DiffID().String(), Size: n}, nil
}

func readLines(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if l := strings.TrimSpace(s.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	return lines, s.Err()
}
