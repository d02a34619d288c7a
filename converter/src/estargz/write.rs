//! Writing eStargz and zstd:chunked blobs.
// Stub.

/// Output format.
pub enum BlobFormat {}
/// Options.
pub struct EstargzOptions;
/// Writer.
pub struct EstargzWriter;
/// Result of writing a blob.
pub struct WrittenBlob;
