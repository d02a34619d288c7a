//! lazypull's integration tests: one binary, one module per topic. They drive the real
//! `lazypull` binary on layers made by `lazypull_converter::sample` (deterministic, generated at
//! run time: no fixture files to go stale) and judge the results with independent tools.
//!
//! Tests that need root or an external tool skip with a printed `SKIPPED:` reason when it is
//! missing, and fail instead under `CI=true`. `bash scripts/test.sh` installs every tool.

/// Shared helpers: skip policy, running commands, layouts, tree snapshots, TOC reading, Go helper.
mod util;

/// `lazypull convert` output extracted with GNU tar matches its input, per corpus layer and
/// format; descriptors, annotations, diffIDs, reproducibility, prefetch order, idempotence.
mod convert_compat;

/// The reference Go `estargz` package verifies our blobs, and our reader reads Go's blobs.
mod interop_go;

/// Corrupt, truncated and hostile inputs fail cleanly, name what failed and leave DST alone.
mod bad_input;

/// Other tools accept converted images: `skopeo copy`, `umoci unpack`.
mod tools;

/// A few hundred MB of a real directory tree of this machine, converted and verified.
mod realistic;

/// `--format erofs`: fsck and kernel mounts of every layer compared with GNU tar, the chunk index
/// against the erofs-image-spec, overlay stacks, prefetch layout, reproducibility, refusals.
mod erofs;

/// `lazypull mount` of converted images through FUSE and overlayfs, `lazypull umount`, warm
/// cache remounts, refusal without a trust anchor.
mod mount;

/// Registries (the real `docker-registry`: anonymous, htpasswd, token auth): convert registry →
/// registry, read back by skopeo, lazy mounts from the registry, docker config and credential
/// helpers, refused credentials, a registry that stops mid-push.
mod registry;

/// Hostile content through `lazypull mount`: TOCs with millions of entries or forged names,
/// sizes and chunks, EROFS directory cycles and bad nids, chunk indexes with a wrong count.
mod hostile;

/// `lazypull snapshotter` under a private containerd 1.6 (proxy plugin, CRI plugin): lazy pulls
/// through CRI and `ctr-remote rpull` fetch no layer blob whole, `ctr run` containers read the
/// image and write to their upper dir, the gzip fallback, restarts, and GC's Remove.
mod snapshotter;

/// Lazy mounts under a misbehaving server (every fault of `lazypull-faultserver`: source bytes
/// or EIO in bounded time, then recovery), `kill -9` of the mount mid-fetch (no stale mount, no
/// corrupt chunk served), and 64 readers over a realistic layer with 1% faults for 60 s.
mod reliability;

/// The command line: help texts and `lazypull demo`.
mod cli;

/// `lazypull bench --quick`: every mode of the cold-start benchmark reaches ready, and the lazy
/// modes fetch less than the full pull.
mod bench;
