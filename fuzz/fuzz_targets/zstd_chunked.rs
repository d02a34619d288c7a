//! The zstd:chunked footer (a skippable frame), its TOC frame and the same TOC validation and
//! chunk reads as eStargz, through `EstargzReader`.
//!
//! Input: one mode byte, then either the whole blob (even), or `[len][payload][json]` (odd),
//! framed as `payload`, `json` in one zstd frame, and a footer giving the right sizes.
#![no_main]

use lazypull_fuzz::{fuzz_toc_blob, zstd_blob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_toc_blob(data, zstd_blob));
