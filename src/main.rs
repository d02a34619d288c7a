//! The `lazypull` command: parses arguments and hands them to the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, ErofsCompressionArg, ErofsMediaTypeArg, FormatArg};
use lazypull::{
    ConvertArgs, DemoArgs, ErofsMediaTypes, InspectArgs, MountArgs, OutputFormat, SnapshotterArgs,
};

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
            erofs_media_types: match c.erofs_media_type {
                ErofsMediaTypeArg::Spec => ErofsMediaTypes::Spec,
                ErofsMediaTypeArg::OciLayer => ErofsMediaTypes::OciLayer,
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
            cache_memory_size: m.cache_memory_size,
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
            prefetch: !m.no_prefetch,
            stats_file: m.stats_file,
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
                containerd: !b.no_containerd,
                merge: b.merge,
            })
        }),
        Command::Snapshotter(s) => lazypull::run_snapshotter(SnapshotterArgs {
            config: s.config,
            root: s.root,
            socket: s.socket,
            print_containerd_config: s.print_containerd_config,
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
