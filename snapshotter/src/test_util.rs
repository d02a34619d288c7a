//! Helpers shared by the crate's unit tests.

use std::collections::BTreeMap;

/// A label map from literal pairs.
pub(crate) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
