//! lazypull-snapshotter: the containerd proxy snapshotter.
//!
//! It will serve containerd's snapshots gRPC API and mount remote layers through
//! [`lazypull_fuse`]. Nothing is implemented yet: the snapshotter is its own issue.

pub use lazypull_fuse as fuse;
