//! The registry client's `WWW-Authenticate` challenge parser, the `--creds` parser and the
//! image reference parser: strings a registry or a user hands us.
#![no_main]

use lazypull_converter::registry::{Challenge, Credentials, Reference};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Some(c) = Challenge::parse(&s) {
        assert!(!c.scheme.is_empty(), "a challenge always has a scheme");
        assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
        for key in c.params.keys() {
            assert_eq!(
                *key,
                key.to_ascii_lowercase(),
                "parameter names are lowercase"
            );
        }
    }
    if let Ok(c) = Credentials::parse(&s) {
        assert!(!c.username.is_empty());
        let _ = c.basic_header();
    }
    if let Ok(r) = s.parse::<Reference>() {
        let shown = r.to_string();
        if let Err(e) = shown.parse::<Reference>() {
            panic!("`{s}` parses, its display form `{shown}` does not: {e}");
        }
    }
});
