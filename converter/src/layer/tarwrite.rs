//! Serialising entries back into tar headers.
// Stub: filled in by the layer-ingest work.

use super::LayerEntry;
use crate::error::Result;

/// Size of a tar block.
pub const TAR_BLOCK: usize = 512;

/// The name an entry gets in the tar we write.
pub fn tar_name(entry: &LayerEntry) -> String {
    entry.name.clone()
}

/// The header blocks for an entry.
pub fn tar_header(_entry: &LayerEntry) -> Result<Vec<u8>> {
    unimplemented!()
}
