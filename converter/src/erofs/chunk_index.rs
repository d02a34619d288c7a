//! The erofs-image-spec chunk index (spec §3.4).
// Placeholder: filled in by the chunk-index work.
