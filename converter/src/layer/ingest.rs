//! Reading a tar layer into [`super::Layer`].
// Stub: filled in by the layer-ingest work.

/// Options for [`super::Layer::ingest`].
#[derive(Clone, Debug, Default)]
pub struct IngestOptions {}
