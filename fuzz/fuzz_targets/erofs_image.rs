//! The EROFS reader: superblock, compact and extended inodes, directory blocks, lookups,
//! inline and shared xattrs, flat and chunk-based data, symlinks, the tree walk.
#![no_main]

use lazypull_fuzz::exercise_erofs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    exercise_erofs(data);
});
