//! The `lazypull` command: parses arguments and hands them to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use lazypull::{ConvertArgs, DemoArgs, InspectArgs, MountArgs, OutputFormat, RegistryArgs};

/// Lazy-pull container images: convert OCI images into seekable eStargz or EROFS layers whose
/// files can be fetched on demand, so containers start before their image is downloaded.
#[derive(Parser, Debug)]
#[command(name = "lazypull", version, about, long_about = None)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace); `RUST_LOG` overrides it.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
    /// recorded prefetch list, over an emulated link (root only).
    ///
    /// Example: lazypull bench --images python,gcc --runs 5 --network 100mbit:20ms
    Bench(BenchCmd),
}

#[derive(clap::Args, Debug)]
struct ConvertCmd {
    /// The image to convert, e.g. `oci:./img:latest` or `docker-archive:./img.tar`.
    src: String,
    /// Where to write the converted image, e.g. `oci:./img-esgz:latest`.
    dst: String,
    /// Output layer format: `estargz` (gzip, any runtime can still pull it), `zstdchunked`, or
    /// `erofs` (a kernel-mountable EROFS image per the erofs-image-spec).
    ///
    /// Example: --format erofs
    #[arg(long, value_enum, default_value_t = FormatArg::Estargz)]
    format: FormatArg,
    /// For `--format erofs`: `zstd` (one zstd frame per chunk, `application/vnd.erofs+zstd`) or
    /// `none` (the raw image, `application/vnd.erofs`).
    ///
    /// Example: --erofs-compression none
    #[arg(long, value_enum, default_value_t = ErofsCompressionArg::Zstd)]
    erofs_compression: ErofsCompressionArg,
    /// Chunk size in bytes: eStargz splits larger files into chunks of this size (default
    /// 4 MiB, as the reference implementation); EROFS cuts the image into chunks of this size,
    /// each fetched and verified on its own (default 1 MiB).
    ///
    /// Example: --chunk-size 1048576
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    chunk_size: Option<u64>,
    /// Compression level: gzip 1-9 (default 9), zstd 1-22 (default 3).
    ///
    /// Example: --compression-level 6
    #[arg(long)]
    compression_level: Option<u32>,
    /// A file listing paths in the order a workload reads them, one per line (as written by
    /// `lazypull mount --record`). Those files are placed first in every layer, followed by a
    /// `.prefetch.landmark`, so a lazy mount fetches them all with one request.
    ///
    /// Example: --prefetch-list ./python-startup.txt
    #[arg(long)]
    prefetch_list: Option<PathBuf>,
    /// Threads used to compress (layers and members in parallel); default: all cores. The
    /// output is byte-identical whatever this is.
    ///
    /// Example: --threads 2
    #[arg(long)]
    threads: Option<usize>,
    /// Convert only this platform of a multi-platform image, as OS/ARCH[/VARIANT].
    ///
    /// Example: --platform linux/arm64
    #[arg(long)]
    platform: Option<String>,
    /// Print a machine-readable JSON report on stdout (the summary still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Never draw a progress bar, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
struct MountCmd {
    /// A converted layer blob file or URL, `oci:DIR[:TAG]`, `oci:http://HOST/PATH[:TAG]`, or a
    /// registry image.
    source: String,
    /// Where to mount (created if missing).
    mountpoint: PathBuf,
    /// Mount only this layer of the image.
    ///
    /// Example: --layer sha256:0123…
    #[arg(long)]
    layer: Option<String>,
    /// The platform to mount from a multi-platform image, as OS/ARCH[/VARIANT].
    ///
    /// Example: --platform linux/amd64
    #[arg(long)]
    platform: Option<String>,
    /// Trust anchor of a single layer: the eStargz TOC digest, or the EROFS chunk-index digest.
    /// Images carry it in their layer annotations.
    ///
    /// Example: --toc-digest sha256:0123…
    #[arg(long)]
    toc_digest: Option<String>,
    /// Serve a layer without a trust anchor (its chunks are still checked against its own,
    /// unverified, TOC or index).
    #[arg(long)]
    insecure_skip_verify: bool,
    /// The chunk cache directory, shared by every mount (chunks are content-addressed).
    ///
    /// Example: --cache-dir /var/cache/lazypull (default: $XDG_CACHE_HOME/lazypull or ~/.cache/lazypull)
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// The most bytes the chunk cache keeps on disk; least recently used chunks go first.
    ///
    /// Example: --cache-size 10737418240 (10 GiB, the default)
    #[arg(long, default_value_t = 10 << 30)]
    cache_size: u64,
    /// Write the path of every file as it is first read, in order, one per line: the input of
    /// `lazypull convert --prefetch-list`.
    ///
    /// Example: --record ./startup-files.txt
    #[arg(long)]
    record: Option<PathBuf>,
    /// Do not fetch the rest of the layers in the background after mounting.
    #[arg(long)]
    no_background_fetch: bool,
    /// Bytes per second the background fetch may use, leaving the rest of the link to
    /// on-demand reads; 0 for no limit.
    ///
    /// Example: --background-rate 5242880 (5 MiB/s; default 20 MiB/s)
    #[arg(long, default_value_t = 20 << 20)]
    background_rate: u64,
    /// Seconds one HTTP range request may take before it is retried; after the retries the
    /// read fails with EIO, so no read hangs.
    ///
    /// Example: --fetch-timeout 10 (default 30)
    #[arg(long, default_value_t = 30)]
    fetch_timeout: u64,
    /// Retries of a failed HTTP range request (with jittered exponential backoff).
    ///
    /// Example: --fetch-retries 2 (default 5)
    #[arg(long, default_value_t = 5)]
    fetch_retries: u32,
    /// Bytes to fetch after a small eStargz read that misses the cache, kept for the reads
    /// that follow (neighbouring files are usually read together); 0 fetches exactly what is
    /// read.
    ///
    /// Example: --read-ahead 262144
    #[arg(long, default_value_t = 0)]
    read_ahead: u64,
    /// Serve every read through lazypull: no FUSE passthrough. By default a file read to its
    /// end is copied, from verified bytes, beside the cache for the life of the mount, and the
    /// kernel reads it directly on later opens.
    #[arg(long)]
    no_passthrough: bool,
    /// The most bytes copied for passthrough per mount.
    ///
    /// Example: --passthrough-size 268435456 (default 1 GiB)
    #[arg(long, default_value_t = lazypull_fuse::fs::DEFAULT_BUDGET)]
    passthrough_size: u64,
    /// Passthrough also for an image of several layers. The merged overlay is then at the
    /// kernel's stacking limit: no other overlayfs can use it as a lower layer.
    #[arg(long)]
    stacked_passthrough: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
struct InspectCmd {
    /// `oci:DIR[:TAG]`, an archive, or a registry image.
    image: String,
    /// Only this platform of a multi-platform image, as OS/ARCH[/VARIANT].
    #[arg(long)]
    platform: Option<String>,
    /// Print JSON instead of one line per layer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

#[derive(clap::Args, Debug)]
struct DemoCmd {
    /// Keep the sample and converted images in this directory instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Bandwidth of the simulated link the lazy mounts read through, in Mbit/s.
    ///
    /// Example: --bandwidth 1000
    #[arg(long, default_value_t = 100)]
    bandwidth: u64,
    /// Round-trip latency of the simulated link, in milliseconds.
    ///
    /// Example: --latency 50
    #[arg(long, default_value_t = 20)]
    latency: u64,
}

#[derive(clap::Args, Debug)]
struct BenchCmd {
    /// Smoke test: one small image, one run per mode, the first network.
    #[arg(long)]
    quick: bool,
    /// Images to build from this machine's software: python, gcc, java (and quick).
    ///
    /// Example: --images python,gcc
    #[arg(long, value_delimiter = ',', default_value = "python,gcc,java")]
    images: Vec<String>,
    /// Runs per mode (median and spread are reported).
    ///
    /// Example: --runs 3
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Links to emulate, RATE:RTT, repeatable (default: 100mbit:20ms, 1gbit:2ms, 100mbit:50ms).
    ///
    /// Example: --network 100mbit:20ms --network 1gbit:2ms
    #[arg(long)]
    network: Vec<String>,
    /// Where images and conversions are kept between runs (default: $TMPDIR/lazypull-bench).
    ///
    /// Example: --work /var/tmp/lazypull-bench
    #[arg(long)]
    work: Option<PathBuf>,
    /// Where coldstart.json, coldstart.svg and coldstart.png are written.
    ///
    /// Example: --out ./bench-out
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Keep the lazy mounts' background fetch on (off by default, so that bytes fetched are
    /// what the workload needed).
    #[arg(long)]
    background_fetch: bool,
    /// An extra option for every `lazypull mount` of the lazy modes, repeatable, to compare
    /// settings.
    ///
    /// Example: --mount-arg=--read-ahead=262144
    #[arg(long, allow_hyphen_values = true)]
    mount_arg: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    Estargz,
    Zstdchunked,
    Erofs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ErofsCompressionArg {
    Zstd,
    None,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lazypull::init_logging(&cli.log);
    let result = match cli.command {
        Command::Convert(c) => lazypull::run_convert(ConvertArgs {
            src: c.src,
            dst: c.dst,
            format: match (c.format, c.erofs_compression) {
                (FormatArg::Estargz, _) => OutputFormat::Estargz,
                (FormatArg::Zstdchunked, _) => OutputFormat::ZstdChunked,
                (FormatArg::Erofs, ErofsCompressionArg::Zstd) => OutputFormat::Erofs,
                (FormatArg::Erofs, ErofsCompressionArg::None) => OutputFormat::ErofsRaw,
            },
            chunk_size: c.chunk_size,
            compression_level: c.compression_level,
            prefetch_list: c.prefetch_list,
            threads: c.threads,
            platform: c.platform,
            json: c.json,
            progress: !c.no_progress,
            registry: c.registry,
        }),
        Command::Mount(m) => lazypull::run_mount(MountArgs {
            source: m.source,
            mountpoint: m.mountpoint,
            layer: m.layer,
            platform: m.platform,
            toc_digest: m.toc_digest,
            insecure_skip_verify: m.insecure_skip_verify,
            cache_dir: m.cache_dir,
            cache_size: m.cache_size,
            record: m.record,
            background_fetch: !m.no_background_fetch,
            background_rate: m.background_rate,
            fetch_timeout: std::time::Duration::from_secs(m.fetch_timeout),
            fetch_retries: m.fetch_retries,
            readahead: m.read_ahead,
            passthrough: !m.no_passthrough,
            passthrough_size: m.passthrough_size,
            stacked_passthrough: m.stacked_passthrough,
            registry: m.registry,
        }),
        Command::Umount { mountpoint } => lazypull::run_umount(&mountpoint),
        Command::Inspect(i) => lazypull::run_inspect(InspectArgs {
            image: i.image,
            platform: i.platform,
            json: i.json,
            registry: i.registry,
        }),
        Command::Demo(d) => lazypull::run_demo(DemoArgs {
            keep: d.keep,
            bandwidth_mbit: d.bandwidth,
            latency_ms: d.latency,
        }),
        Command::Bench(b) => lazypull::bench::networks(&b.network).and_then(|networks| {
            lazypull::bench::run_bench(lazypull::bench::BenchArgs {
                quick: b.quick,
                images: b.images,
                runs: b.runs.max(1),
                networks,
                work: b.work.unwrap_or_else(lazypull::bench::default_work_dir),
                out: b.out,
                background_fetch: b.background_fetch,
                mount_args: b.mount_arg,
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lazypull: error: {}", lazypull::error_message(&e));
            ExitCode::FAILURE
        }
    }
}
