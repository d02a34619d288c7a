//! The eStargz reader (gzip and legacy stargz footers, the TOC tar, the TOC JSON and its
//! validation, chunk reads) over a blob in memory.
//!
//! Input: one mode byte, then either the whole blob (even mode byte), or `[len][payload][json]`
//! (odd), which becomes a well-formed blob of `payload` with `json` as its TOC, so mutations
//! land in the JSON and the entries instead of breaking the footer or the gzip member.
#![no_main]

use lazypull_fuzz::{fuzz_toc_blob, gzip_blob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_toc_blob(data, gzip_blob));
