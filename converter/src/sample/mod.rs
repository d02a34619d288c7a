//! Deterministic sample layers and a sample image, for tests, benchmarks and `lazypull demo`.
//!
//! [`layers`] returns the test corpus: one uncompressed tar per awkward corner of the format
//! (every entry type, PAX records, whiteouts, chunk boundaries, many small files, one large file,
//! repeated paths, loose names). [`write_sample_image`] writes a small multi-layer OCI image layout
//! with gzip layers. Everything is a function of its arguments: no clock, no randomness from the
//! machine, so the same call gives the same bytes everywhere.
//!
//! ```
//! use lazypull_converter::sample;
//! let corpus = sample::layers(64 * 1024);
//! assert!(corpus.iter().any(|l| l.name == "types"));
//! assert_eq!(corpus[0].tar, sample::layers(64 * 1024)[0].tar);
//! ```

mod corpus;
mod entry;
mod image;

pub use corpus::layers;
pub use image::{
    write_oci_layout, write_sample_image, ImageLayer, SampleBlob, SampleImage, MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_MANIFEST, REF_NAME,
};

/// One generated layer: a name saying what it exercises, and its uncompressed tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleLayer {
    pub name: &'static str,
    pub tar: Vec<u8>,
}

/// A small xorshift64* generator: enough to make incompressible, reproducible file contents.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed` (zero is replaced, as xorshift never leaves it).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A pseudo-random number below `n` (which must not be 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// `len` incompressible bytes determined by `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    XorShift::new(seed).bytes(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_reproducible_and_spread() {
        assert_eq!(random_bytes(7, 1000), random_bytes(7, 1000));
        assert_ne!(random_bytes(7, 64), random_bytes(8, 64));
        let data = random_bytes(1, 1 << 16);
        let mut seen = [0usize; 256];
        data.iter().for_each(|&b| seen[b as usize] += 1);
        assert!(seen.iter().all(|&n| n > 0), "every byte value occurs");
    }

    #[test]
    fn corpus_is_deterministic() {
        let a = layers(64 * 1024);
        let b = layers(64 * 1024);
        assert_eq!(a, b);
        let names: Vec<_> = a.iter().map(|l| l.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            names.len(),
            unique.len(),
            "layer names are unique: {names:?}"
        );
    }

    #[test]
    fn corpus_parses_as_tar() {
        for layer in layers(64 * 1024) {
            let mut archive = tar::Archive::new(layer.tar.as_slice());
            let mut count = 0;
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap_or_else(|e| panic!("{}: {e}", layer.name));
                std::io::copy(&mut entry, &mut std::io::sink()).unwrap();
                count += 1;
            }
            assert!(count > 0, "{} has entries", layer.name);
        }
    }
}
