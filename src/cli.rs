//! The command line of `lazypull`: every subcommand's arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use lazypull::RegistryArgs;

/// Lazy-pull container images: convert OCI images into seekable eStargz or EROFS layers whose
/// files can be fetched on demand, so containers start before their image is downloaded.
#[derive(Parser, Debug)]
#[command(name = "lazypull", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log verbosity (error, warn, info, debug, trace); `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "warn")]
    pub(crate) log: String,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Convert every layer of an image into a lazily pullable format.
    ///
    /// Example: lazypull convert oci:./app:1.0 oci:./app-esgz:1.0
    ///
    /// Sources: `oci:DIR[:TAG]` (an OCI image layout), `docker-archive:FILE` (a `docker save`
    /// tarball), `oci-archive:FILE[:TAG]`, `[docker://]HOST/REPO[:TAG|@DIGEST]` (a registry).
    /// Destinations: `oci:DIR[:TAG]` (an existing layout gets the new image added under TAG) or
    /// a registry. The destination changes only when the whole conversion succeeded: a registry
    /// tag is moved by the last request of the push.
    ///
    /// Registry credentials: --creds, else the docker config ($DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json: auths, credHelpers, credsStore). HTTPS_PROXY/NO_PROXY apply.
    #[command(verbatim_doc_comment)]
    Convert(ConvertCmd),
    /// Mount a converted layer, or a whole image as a read-only overlay, fetching and
    /// verifying chunks only as they are read.
    ///
    /// Example: lazypull mount oci:./app-esgz:1.0 /mnt/app
    ///
    /// SOURCE: a blob file or an `http://`/`https://` URL of a blob on any server with Range
    /// support (give --toc-digest), `oci:DIR[:TAG]`, `oci:http://HOST/PATH[:TAG]` (an image
    /// layout on an HTTP server) or `[docker://]HOST/REPO[:TAG|@DIGEST]` (a registry): every
    /// layer, stacked with overlayfs (`--layer DIGEST` for one); registry layers are read by
    /// range requests with the registry's authentication. Serves until Ctrl-C, SIGTERM or
    /// `lazypull umount`.
    #[command(verbatim_doc_comment)]
    Mount(MountCmd),
    /// Unmount what `lazypull mount` serves; the server then exits.
    ///
    /// Example: lazypull umount /mnt/app
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Show each layer of an image: format, sizes, entries, chunks, prefetch region and the
    /// annotations a lazy mount verifies it by (only TOCs and indexes are fetched).
    ///
    /// Example: lazypull inspect 127.0.0.1:5000/app:1.0-esgz --json
    Inspect(InspectCmd),
    /// Build a small sample image, convert it, verify it and print what happened.
    ///
    /// Example: lazypull demo --keep ./demo-out
    Demo(DemoCmd),
    /// Cold-start benchmark: full pull vs lazy eStargz vs lazy EROFS, with and without a
    /// recorded prefetch list, over an emulated link (root only); when containerd is installed,
    /// also containerd's full pull vs `lazypull snapshotter` with `ctr run`.
    ///
    /// Example: lazypull bench --images python,gcc --runs 5 --network 100mbit:20ms
    Bench(BenchCmd),
    /// Serve containerd's snapshots API as a proxy plugin: eStargz and EROFS layers are
    /// mounted lazily from their registry, other layers are unpacked by containerd as usual.
    ///
    /// Example: lazypull snapshotter --config /etc/lazypull/snapshotter.toml
    ///
    /// containerd's side: `lazypull snapshotter --print-containerd-config`. Remote layers are
    /// served by `lazypull mount` processes of their own, which outlive a restart of this one.
    #[command(verbatim_doc_comment)]
    Snapshotter(SnapshotterCmd),
}

#[derive(clap::Args, Debug)]
pub(crate) struct SnapshotterCmd {
    /// The TOML configuration (root, socket, cache, registry, fetch, metrics_address); every
    /// key is optional.
    ///
    /// Example: --config /etc/lazypull/snapshotter.toml
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// The root directory (metadata store and snapshots), over the config's `root`.
    #[arg(long)]
    pub(crate) root: Option<PathBuf>,
    /// The unix socket to serve on, over the config's `socket`.
    #[arg(long)]
    pub(crate) socket: Option<PathBuf>,
    /// Print what to add to containerd's config.toml (proxy plugin and CRI) and exit.
    #[arg(long)]
    pub(crate) print_containerd_config: bool,
}

#[derive(clap::Args, Debug)]
pub(crate) struct ConvertCmd {
    /// The image to convert, e.g. `oci:./img:latest` or `docker-archive:./img.tar`.
    pub(crate) src: String,
    /// Where to write the converted image, e.g. `oci:./img-esgz:latest`.
    pub(crate) dst: String,
    /// Output layer format: `estargz` (gzip, any runtime can still pull it), `zstdchunked`, or
    /// `erofs` (a kernel-mountable EROFS image per the erofs-image-spec).
    ///
    /// Example: --format erofs
    #[arg(long, value_enum, default_value_t = FormatArg::Estargz)]
    pub(crate) format: FormatArg,
    /// For `--format erofs`: `zstd` (one zstd frame per chunk, `application/vnd.erofs+zstd`) or
    /// `none` (the raw image, `application/vnd.erofs`).
    ///
    /// Example: --erofs-compression none
    #[arg(long, value_enum, default_value_t = ErofsCompressionArg::Zstd)]
    pub(crate) erofs_compression: ErofsCompressionArg,
    /// For `--format erofs`: the layer media types. `spec` writes the erofs-image-spec's
    /// (`application/vnd.erofs+zstd`, `application/vnd.erofs`); `oci-layer` writes the same
    /// layers as `application/vnd.oci.image.layer.v1.erofs+zstd` (`…v1.erofs` raw), the only
    /// names containerd 1.6 labels for a remote snapshotter, so it can pull the image lazily
    /// through `lazypull snapshotter`. Either way a runtime that cannot mount EROFS remotely
    /// cannot unpack the layers: they are not tars.
    ///
    /// Example: --erofs-media-type oci-layer
    #[arg(long, value_enum, default_value_t = ErofsMediaTypeArg::Spec)]
    pub(crate) erofs_media_type: ErofsMediaTypeArg,
    /// Chunk size in bytes: eStargz splits larger files into chunks of this size (default
    /// 4 MiB, as the reference implementation); EROFS cuts the image into chunks of this size,
    /// each fetched and verified on its own (default 1 MiB).
    ///
    /// Example: --chunk-size 1048576
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) chunk_size: Option<u64>,
    /// Compression level: gzip 1-9 (default 9), zstd 1-22 (default 3).
    ///
    /// Example: --compression-level 6
    #[arg(long)]
    pub(crate) compression_level: Option<u32>,
    /// A file listing paths in the order a workload reads them, one per line (as written by
    /// `lazypull mount --record`). Those files are placed first in every layer, followed by a
    /// `.prefetch.landmark`, so a lazy mount fetches them all with one request. A large file
    /// the list shows was read sparsely (under half of it) is left out of eStargz's prefetch
    /// region; EROFS stores it in chunks and puts only the chunks read there.
    ///
    /// Example: --prefetch-list ./python-startup.txt
    #[arg(long)]
    pub(crate) prefetch_list: Option<PathBuf>,
    /// Threads used to compress (layers and members in parallel); default: all cores. The
    /// output is byte-identical whatever this is.
    ///
    /// Example: --threads 2
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Convert only this platform of a multi-platform image, as OS/ARCH[/VARIANT].
    ///
    /// Example: --platform linux/arm64
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// Print a machine-readable JSON report on stdout (the summary still goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// Never draw a progress bar, even on a terminal.
    #[arg(long)]
    pub(crate) no_progress: bool,
    #[command(flatten)]
    pub(crate) registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct MountCmd {
    /// A converted layer blob file or URL, `oci:DIR[:TAG]`, `oci:http://HOST/PATH[:TAG]`, or a
    /// registry image.
    pub(crate) source: String,
    /// Where to mount (created if missing).
    pub(crate) mountpoint: PathBuf,
    /// Mount only this layer of the image.
    ///
    /// Example: --layer sha256:0123…
    #[arg(long)]
    pub(crate) layer: Option<String>,
    /// The platform to mount from a multi-platform image, as OS/ARCH[/VARIANT].
    ///
    /// Example: --platform linux/amd64
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// Trust anchor of a single layer: the eStargz TOC digest, or the EROFS chunk-index digest.
    /// Images carry it in their layer annotations.
    ///
    /// Example: --toc-digest sha256:0123…
    #[arg(long)]
    pub(crate) toc_digest: Option<String>,
    /// Serve a layer without a trust anchor (its chunks are still checked against its own,
    /// unverified, TOC or index).
    #[arg(long)]
    pub(crate) insecure_skip_verify: bool,
    /// The chunk cache directory, shared by every mount (chunks are content-addressed).
    ///
    /// Example: --cache-dir /var/cache/lazypull (default: $XDG_CACHE_HOME/lazypull or ~/.cache/lazypull)
    #[arg(long)]
    pub(crate) cache_dir: Option<PathBuf>,
    /// The most bytes the chunk cache keeps on disk; least recently used chunks go first.
    ///
    /// Example: --cache-size 10737418240 (10 GiB, the default)
    #[arg(long, default_value_t = 10 << 30)]
    pub(crate) cache_size: u64,
    /// The most bytes of chunks kept in memory, in front of the disk cache (most of the
    /// server's resident memory while reads are served).
    ///
    /// Example: --cache-memory-size 16777216 (default 64 MiB)
    #[arg(long, default_value_t = lazypull_fuse::cache::DEFAULT_MEMORY_BYTES)]
    pub(crate) cache_memory_size: u64,
    /// Write the path of every file as it is first read, in order, one per line, with the
    /// byte ranges read of files not read in full: the input of `lazypull convert
    /// --prefetch-list`. Kept up to date while mounted (every half second); recording turns
    /// passthrough off, so that every read is seen.
    ///
    /// Example: --record ./startup-files.txt
    #[arg(long)]
    pub(crate) record: Option<PathBuf>,
    /// Do not fetch the rest of the layers in the background after mounting.
    #[arg(long)]
    pub(crate) no_background_fetch: bool,
    /// Do not fetch the layers' prefetch regions before serving.
    #[arg(long)]
    pub(crate) no_prefetch: bool,
    /// Keep the statistics report here while mounted (default: CACHE_DIR/stats.json),
    /// rewritten every 5 s and on SIGUSR1.
    #[arg(long)]
    pub(crate) stats_file: Option<PathBuf>,
    /// Bytes per second the background fetch may use, leaving the rest of the link to
    /// on-demand reads; 0 for no limit.
    ///
    /// Example: --background-rate 5242880 (5 MiB/s; default 20 MiB/s)
    #[arg(long, default_value_t = 20 << 20)]
    pub(crate) background_rate: u64,
    /// Seconds one HTTP range request may take before it is retried; after the retries the
    /// read fails with EIO, so no read hangs.
    ///
    /// Example: --fetch-timeout 10 (default 30)
    #[arg(long, default_value_t = 30)]
    pub(crate) fetch_timeout: u64,
    /// Retries of a failed HTTP range request (with jittered exponential backoff).
    ///
    /// Example: --fetch-retries 2 (default 5)
    #[arg(long, default_value_t = 5)]
    pub(crate) fetch_retries: u32,
    /// Bytes to fetch after a small eStargz read that misses the cache, kept for the reads
    /// that follow (neighbouring files are usually read together); 0 fetches exactly what is
    /// read.
    ///
    /// Example: --read-ahead 262144
    #[arg(long, default_value_t = 0)]
    pub(crate) read_ahead: u64,
    /// Serve every read through lazypull: no FUSE passthrough. By default a file read to its
    /// end is copied, from verified bytes, beside the cache for the life of the mount, and the
    /// kernel reads it directly on later opens.
    #[arg(long)]
    pub(crate) no_passthrough: bool,
    /// The most bytes copied for passthrough per mount.
    ///
    /// Example: --passthrough-size 268435456 (default 1 GiB)
    #[arg(long, default_value_t = lazypull_fuse::fs::DEFAULT_BUDGET)]
    pub(crate) passthrough_size: u64,
    /// Passthrough also for an image of several layers. The merged overlay is then at the
    /// kernel's stacking limit: no other overlayfs can use it as a lower layer.
    #[arg(long)]
    pub(crate) stacked_passthrough: bool,
    #[command(flatten)]
    pub(crate) registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct InspectCmd {
    /// `oci:DIR[:TAG]`, an archive, or a registry image.
    pub(crate) image: String,
    /// Only this platform of a multi-platform image, as OS/ARCH[/VARIANT].
    #[arg(long)]
    pub(crate) platform: Option<String>,
    /// Print JSON instead of one line per layer.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
pub(crate) struct DemoCmd {
    /// Keep the sample and converted images in this directory instead of a temporary one.
    #[arg(long)]
    pub(crate) keep: Option<PathBuf>,
    /// Bandwidth of the simulated link the lazy mounts read through, in Mbit/s.
    ///
    /// Example: --bandwidth 1000
    #[arg(long, default_value_t = 100)]
    pub(crate) bandwidth: u64,
    /// Round-trip latency of the simulated link, in milliseconds.
    ///
    /// Example: --latency 50
    #[arg(long, default_value_t = 20)]
    pub(crate) latency: u64,
}

#[derive(clap::Args, Debug)]
pub(crate) struct BenchCmd {
    /// Smoke test: one small image, one run per mode, the first network.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Images to build from this machine's software: python, gcc, java (and quick).
    ///
    /// Example: --images python,gcc
    #[arg(long, value_delimiter = ',', default_value = "python,gcc,java")]
    pub(crate) images: Vec<String>,
    /// Runs per mode (median and spread are reported).
    ///
    /// Example: --runs 3
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Links to emulate, RATE:RTT, repeatable (default: 100mbit:20ms, 1gbit:2ms, 100mbit:50ms).
    ///
    /// Example: --network 100mbit:20ms --network 1gbit:2ms
    #[arg(long)]
    pub(crate) network: Vec<String>,
    /// Where images and conversions are kept between runs (default: $TMPDIR/lazypull-bench).
    ///
    /// Example: --work /var/tmp/lazypull-bench
    #[arg(long)]
    pub(crate) work: Option<PathBuf>,
    /// Where coldstart.json, coldstart.svg and coldstart.png are written.
    ///
    /// Example: --out ./bench-out
    #[arg(long, default_value = "bench-out")]
    pub(crate) out: PathBuf,
    /// Keep the lazy mounts' background fetch on (off by default, so that bytes fetched are
    /// what the workload needed).
    #[arg(long)]
    pub(crate) background_fetch: bool,
    /// An extra option for every `lazypull mount` of the lazy modes, repeatable, to compare
    /// settings.
    ///
    /// Example: --mount-arg=--read-ahead=262144
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) mount_arg: Vec<String>,
    /// Leave out the containerd modes (containerd's own full pull and `lazypull snapshotter`),
    /// which otherwise run whenever containerd, ctr-remote, runc, docker-registry and skopeo
    /// are installed.
    #[arg(long)]
    pub(crate) no_containerd: bool,
    /// Run nothing: merge the reports (coldstart.json) of earlier runs in these directories
    /// into one table, JSON and chart in --out, e.g. runs made one network at a time.
    ///
    /// Example: --merge out-20ms --merge out-2ms
    #[arg(long, value_name = "DIR")]
    pub(crate) merge: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum FormatArg {
    Estargz,
    Zstdchunked,
    Erofs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ErofsCompressionArg {
    Zstd,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum ErofsMediaTypeArg {
    Spec,
    OciLayer,
}
