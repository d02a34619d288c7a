//! The snapshotter's configuration: a TOML file, every field optional.
//!
//! ```toml
//! root = "/var/lib/lazypull-snapshotter"
//! socket = "/run/lazypull/snapshotter.sock"
//! metrics_address = "127.0.0.1:9110"
//!
//! [cache]
//! dir = "/var/cache/lazypull"      # default: ROOT/cache
//! size = 10737418240
//!
//! [registry]
//! plain_http = false
//! insecure = false
//! mirrors = ["127.0.0.1:65001"]
//! creds = "user:pass"              # default: the docker config and its helpers
//!
//! [fetch]
//! prefetch = true
//! background = true
//! background_rate = 20971520
//! timeout_secs = 30
//! retries = 5
//! mount_timeout_secs = 60
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Everything `lazypull snapshotter` is told.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the metadata store and the snapshots' directories live.
    pub root: PathBuf,
    /// The unix socket containerd dials (`[proxy_plugins.lazypull] address`).
    #[serde(alias = "address")]
    pub socket: PathBuf,
    /// `HOST:PORT` of the Prometheus text endpoint (`GET /metrics`); none when unset.
    pub metrics_address: Option<String>,
    /// The program whose `mount` subcommand serves one remote layer (default: this executable).
    pub mount_program: Option<PathBuf>,
    pub cache: CacheConfig,
    pub registry: RegistryConfig,
    pub fetch: FetchConfig,
}

/// The chunk cache every remote layer shares.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Default: `ROOT/cache`.
    pub dir: Option<PathBuf>,
    /// Bytes of chunks kept on disk; least recently used go first.
    pub size: u64,
}

/// How registries are reached: the options of `lazypull mount`/`convert`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// `USER:PASS` for every registry, instead of the docker config.
    pub creds: Option<String>,
    pub plain_http: bool,
    pub insecure: bool,
    /// Registries (`HOST[:PORT]`) to pull from first.
    pub mirrors: Vec<String>,
}

/// Prefetch, background fetch and range requests of remote layers.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// Fetch a layer's prefetch region before answering Prepare.
    pub prefetch: bool,
    /// Fetch the rest of each layer in the background, yielding to on-demand reads.
    pub background: bool,
    /// Bytes per second the background fetch may use (0: no limit).
    pub background_rate: u64,
    /// Seconds one range request may take before it is retried.
    pub timeout_secs: u64,
    /// Retries of a failed range request.
    pub retries: u32,
    /// Seconds a remote layer may take to mount before Prepare falls back to a plain snapshot.
    pub mount_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/lazypull-snapshotter"),
            socket: PathBuf::from("/run/lazypull/snapshotter.sock"),
            metrics_address: None,
            mount_program: None,
            cache: CacheConfig::default(),
            registry: RegistryConfig::default(),
            fetch: FetchConfig::default(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: None,
            size: 10 << 30,
        }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            prefetch: true,
            background: true,
            background_rate: 20 << 20,
            timeout_secs: 30,
            retries: 5,
            mount_timeout_secs: 60,
        }
    }
}

impl Config {
    /// Read a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.into(),
            why: e.to_string(),
        })?;
        Self::parse(&text).map_err(|why| Error::Config {
            path: path.into(),
            why,
        })
    }

    /// Parse TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The chunk cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache
            .dir
            .clone()
            .unwrap_or_else(|| self.root.join("cache"))
    }

    /// What to add to containerd's config (version 2) to use this snapshotter, for `ctr` and
    /// for CRI (which then forwards the image and layer labels a lazy pull needs).
    pub fn containerd_config(&self) -> String {
        format!(
            "[proxy_plugins.lazypull]\n  type = \"snapshot\"\n  address = \"{}\"\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"lazypull\"\n  \
             disable_snapshot_annotations = false\n",
            self.socket.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_partial_file_and_rejects_unknown_keys() {
        let c = Config::parse(
            "root = \"/r\"\nsocket = \"/s.sock\"\n[cache]\nsize = 100\n\
             [registry]\nplain_http = true\nmirrors = [\"m:1\"]\n[fetch]\nbackground = false\n",
        )
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        assert_eq!(c.cache.size, 100);
        assert_eq!(c.cache_dir(), PathBuf::from("/r/cache"));
        assert!(c.registry.plain_http);
        assert_eq!(c.registry.mirrors, ["m:1"]);
        assert!(!c.fetch.background);
        assert!(c.fetch.prefetch, "unset fields keep their defaults");
        assert!(Config::parse("rot = \"/r\"").is_err());
        let snippet = c.containerd_config();
        assert!(snippet.contains("address = \"/s.sock\""));
        assert!(snippet.contains("disable_snapshot_annotations = false"));
    }
}
