//! Reading EROFS images.
// Placeholder: filled in by the reader work.

/// Reader of an EROFS image.
pub struct ErofsReader;
