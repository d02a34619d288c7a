//! `lazypull snapshotter`: the containerd proxy snapshotter of [`lazypull_snapshotter`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use lazypull_snapshotter::Config;

/// Arguments of `lazypull snapshotter`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotterArgs {
    /// The TOML configuration; defaults apply without one.
    pub config: Option<PathBuf>,
    /// Overrides the config's `root`.
    pub root: Option<PathBuf>,
    /// Overrides the config's `socket`.
    pub socket: Option<PathBuf>,
    /// Print containerd's side of the configuration instead of serving.
    pub print_containerd_config: bool,
}

/// Load the configuration, then print containerd's snippet or serve until SIGINT/SIGTERM.
pub fn run_snapshotter(args: SnapshotterArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(root) = args.root {
        config.root = root;
    }
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    if args.print_containerd_config {
        print!("{}", config.containerd_config());
        return Ok(());
    }
    lazypull_snapshotter::run(config).context("snapshotter")
}
