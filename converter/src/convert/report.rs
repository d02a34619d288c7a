//! What a conversion did, for the one-line summaries and the `--json` report.

use serde::Serialize;

use crate::digest::Digest;

/// The whole conversion.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConvertReport {
    pub source: String,
    pub destination: String,
    pub format: String,
    pub root: DescriptorReport,
    pub manifests: Vec<ManifestReport>,
    /// What pushing to a registry destination did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::registry::PushReport>,
    pub seconds: f64,
}

/// A descriptor, as reported.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescriptorReport {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// One converted manifest (one platform).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestReport {
    /// `os/arch[/variant]`, when the source index said.
    pub platform: Option<String>,
    pub digest: Digest,
    pub config: Digest,
    pub layers: Vec<LayerReport>,
}

/// One layer.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerReport {
    pub source_digest: Digest,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub source_size: u64,
    pub diff_id: Digest,
    /// Digest of the TOC JSON (eStargz and zstd:chunked); none for EROFS.
    pub toc_digest: Option<Digest>,
    /// Digest of the chunk index payload (EROFS): what `lazypull mount --toc-digest` checks a
    /// bare EROFS blob against.
    pub chunk_index_digest: Option<Digest>,
    pub uncompressed_size: u64,
    pub entries: usize,
    pub chunks: usize,
    /// Compressed size of the prefetch region (`[0, landmark)`), 0 without a prefetch list.
    pub prefetch_size: u64,
    pub seconds: f64,
    /// The layer already was in the target format and was copied unchanged.
    pub kept: bool,
}

impl LayerReport {
    /// The one-line summary printed for every layer.
    pub fn summary_line(&self, index: usize, total: usize) -> String {
        let what = if self.kept { "kept" } else { "converted" };
        format!(
            "layer {}/{} {} {} -> {}: {} -> {}, {} entries, {} chunks, {:.2}s",
            index + 1,
            total,
            what,
            self.source_digest.short(),
            self.digest.short(),
            human_bytes(self.source_size),
            human_bytes(self.size),
            self.entries,
            self.chunks,
            self.seconds
        )
    }
}

/// `12.3 MiB` style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
