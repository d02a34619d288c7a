//! Reading eStargz and zstd:chunked blobs.
// Stub: filled in by the reader work.

/// A file in the TOC.
pub struct FileEntry;
/// One chunk of a file.
pub struct ChunkRef;
/// Reader of an eStargz blob.
pub struct EstargzReader;
