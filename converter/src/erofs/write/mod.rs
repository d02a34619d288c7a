//! Building EROFS images from layers.
// Placeholder: filled in by the builder work.

/// Options of the builder.
pub struct ErofsOptions;
/// Builder.
pub struct ErofsBuilder;
/// A built image.
pub struct BuiltImage;
