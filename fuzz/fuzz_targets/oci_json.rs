//! Manifest, index and config JSON through the code the converter parses and rewrites them
//! with: `Index`/`Manifest::from_json`, descriptors and platforms, media-type classification,
//! the OCI rewrites (which must parse back), and the byte-splicing `rewrite_config` and
//! `add_erofs_os_feature`.
#![no_main]

use lazypull_converter::convert::add_erofs_os_feature;
use lazypull_converter::oci::media::LayerMediaType;
use lazypull_converter::oci::{rewrite_config, Index, Manifest, PlatformFilter};
use lazypull_converter::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = Index::from_json(data) {
        let filter: PlatformFilter = "linux/arm64/v8".parse().expect("a valid filter");
        let _ = index.select(&filter);
        for d in &index.descriptors {
            let _ = d.describe();
        }
        let json = index.to_oci_json(&index.descriptors);
        let again = Index::from_json(&json).expect("a rewritten index parses");
        assert_eq!(again.descriptors, index.descriptors);
    }
    if let Ok(manifest) = Manifest::from_json(data) {
        for layer in &manifest.layers {
            let _ = LayerMediaType::classify(&layer.media_type);
        }
        let json = manifest.to_oci_json(&manifest.config, &manifest.layers);
        let again = Manifest::from_json(&json).expect("a rewritten manifest parses");
        assert_eq!(again.layers, manifest.layers);
    }
    config(data);
});

fn config(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(out) = add_erofs_os_feature(data) {
        serde_json::from_slice::<serde_json::Value>(&out).expect("the featured config parses");
    }
    // As many new diffIDs as the config lists, so the splice is reached.
    let n = value
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .map_or(0, Vec::len);
    let ids: Vec<Digest> = (0..n).map(|i| Digest::of(&i.to_le_bytes())).collect();
    let Ok(out) = rewrite_config(data, &ids) else {
        return;
    };
    let v: serde_json::Value = serde_json::from_slice(&out).expect("a rewritten config parses");
    let got = &v["rootfs"]["diff_ids"];
    let want = serde_json::to_value(&ids).unwrap();
    assert_eq!(
        *got, want,
        "rewrite_config replaced the diff_ids serde_json reads"
    );
}
