//! The `lazypull` application: what each subcommand does, behind the thin CLI in `main.rs`.
//!
//! - [`run_convert`]: `lazypull convert`, a wrapper around
//!   [`lazypull_converter::convert::convert`] with a progress bar, per-layer summaries on stderr
//!   and an optional JSON report on stdout.
//! - [`run_mount`] / [`run_umount`]: `lazypull mount` and `lazypull umount`, serving converted
//!   layers (from files, URLs, layouts or registries) through FUSE with every chunk verified
//!   and cached.
//! - [`run_inspect`]: `lazypull inspect`, each layer's format, sizes, entries, chunks, prefetch
//!   region and verification annotations, read as a lazy mount reads them.
//! - [`run_demo`]: `lazypull demo`, which builds the sample image, converts it to eStargz and
//!   zstd:chunked, re-reads every converted layer through the verifying reader, and prints what
//!   it found.
//! - [`bench::run_bench`]: `lazypull bench`, the cold-start benchmark.
//! - [`containerd`]: harness support (a private containerd, the snapshotter, a registry) for
//!   the benchmark and the integration tests.
//! - [`run_snapshotter`]: `lazypull snapshotter`, the containerd proxy snapshotter of
//!   [`lazypull_snapshotter`].

pub mod bench;
pub mod containerd;
mod demo;
mod demo_lazy;
mod inspect;
mod mount;
mod progress;
mod snapshotter;

use std::path::PathBuf;

use anyhow::{Context, Result};
use lazypull_converter::convert::{self, ConvertOptions, TargetFormat};
pub use lazypull_converter::erofs::format::ErofsMediaTypes;
use lazypull_converter::prefetch::PrefetchList;
use lazypull_converter::registry::{Credentials, RegistryOptions};

pub use demo::{run_demo, DemoArgs};
pub use inspect::{run_inspect, InspectArgs};
pub use mount::{run_mount, run_umount, MountArgs};
pub use snapshotter::{run_snapshotter, SnapshotterArgs};

/// Output layer format chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Estargz,
    ZstdChunked,
    Erofs,
    ErofsRaw,
}

/// Arguments of `lazypull convert`.
#[derive(Clone, Debug)]
pub struct ConvertArgs {
    pub src: String,
    pub dst: String,
    pub format: OutputFormat,
    /// The names EROFS layers are written under.
    pub erofs_media_types: ErofsMediaTypes,
    pub chunk_size: Option<u64>,
    pub compression_level: Option<u32>,
    pub prefetch_list: Option<PathBuf>,
    pub threads: Option<usize>,
    pub platform: Option<String>,
    pub json: bool,
    pub progress: bool,
    pub registry: RegistryArgs,
}

/// How registries are reached (`convert`, `mount`, `inspect`), from the command line.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Credentials for every registry, instead of the docker config.
    ///
    /// Example: --creds alice:s3cret
    #[arg(long, value_name = "USER:PASS")]
    pub creds: Option<String>,
    /// Speak plain HTTP to registries (loopback hosts always get plain HTTP).
    #[arg(long)]
    pub plain_http: bool,
    /// Accept any TLS certificate from registries.
    #[arg(long)]
    pub insecure: bool,
    /// A registry to pull from first (repeatable, tried in order); the image's own registry is
    /// the fallback. Content is verified by digest whoever serves it.
    ///
    /// Example: --mirror 127.0.0.1:65001 (a P2P daemon such as Dragonfly's dfdaemon)
    #[arg(long = "mirror", value_name = "HOST[:PORT]")]
    pub mirrors: Vec<String>,
    /// Blobs larger than this many bytes are pushed in chunks of this size (default 16 MiB).
    #[arg(long, hide = true)]
    pub upload_chunk_size: Option<u64>,
}

impl RegistryArgs {
    /// The converter's registry options.
    pub fn options(&self) -> Result<RegistryOptions> {
        let mut opts = RegistryOptions {
            // `LAZYPULL_CREDS` keeps them off command lines (the snapshotter's layer servers).
            creds: self
                .creds
                .clone()
                .or_else(|| std::env::var("LAZYPULL_CREDS").ok())
                .as_deref()
                .map(Credentials::parse)
                .transpose()?,
            plain_http: self.plain_http,
            insecure: self.insecure,
            mirrors: self.mirrors.clone(),
            ..RegistryOptions::default()
        };
        if let Some(n) = self.upload_chunk_size {
            opts.upload_chunk_size = n;
        }
        Ok(opts)
    }
}

/// The error with its causes, each once: the library's errors already show their sources, so
/// a cause whose text ends the message so far is not repeated.
pub fn error_message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.ends_with(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

/// Set up `tracing` output on stderr at `level` unless `RUST_LOG` says otherwise.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Read a prefetch list (`lazypull_converter::prefetch` has the format): one path per line,
/// optionally with the byte ranges read; blank lines and `#` comments are ignored.
pub fn read_prefetch_list(path: &std::path::Path) -> Result<PrefetchList> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading prefetch list {}", path.display()))?;
    PrefetchList::parse(&text).with_context(|| format!("prefetch list {}", path.display()))
}

/// `lazypull convert`.
pub fn run_convert(args: ConvertArgs) -> Result<()> {
    let opts = ConvertOptions {
        format: match args.format {
            OutputFormat::Estargz => TargetFormat::Estargz,
            OutputFormat::ZstdChunked => TargetFormat::ZstdChunked,
            OutputFormat::Erofs => TargetFormat::Erofs,
            OutputFormat::ErofsRaw => TargetFormat::ErofsRaw,
        },
        chunk_size: args.chunk_size,
        level: args.compression_level,
        prefetch: args
            .prefetch_list
            .as_deref()
            .map(read_prefetch_list)
            .transpose()?,
        threads: args.threads,
        platform: args.platform.clone(),
        registry: args.registry.options()?,
        erofs_media_types: args.erofs_media_types,
    };
    let bar = progress::Bar::new(args.progress);
    let report = convert::convert(&args.src, &args.dst, &opts, &bar)?;
    bar.finish();
    let layers: usize = report.manifests.iter().map(|m| m.layers.len()).sum();
    eprintln!(
        "converted {} ({} manifest{}, {} layer{}) into {} as {} in {:.2}s: {}",
        args.src,
        report.manifests.len(),
        if report.manifests.len() == 1 { "" } else { "s" },
        layers,
        if layers == 1 { "" } else { "s" },
        args.dst,
        report.format,
        report.seconds,
        report.root.digest
    );
    if let Some(p) = &report.push {
        eprintln!(
            "pushed {}: {} blobs ({} already there, {} mounted, {} uploaded, {}), {} manifests",
            p.reference,
            p.blobs,
            p.existing,
            p.mounted,
            p.uploaded,
            convert::human_bytes(p.uploaded_bytes),
            p.manifests
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
