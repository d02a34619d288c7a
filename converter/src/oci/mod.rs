//! OCI images in and out: references, media types, image sources and the layout destination.
//!
//! - [`ImageRef`] parses what the user typed (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
//!   `docker-archive:FILE[:REPO:TAG]`, `docker://…`).
//! - [`open_source`] turns a reference into an [`ImageSource`]: something that names a root
//!   [`Descriptor`] (a manifest or an index) and serves blobs by descriptor. A `docker save`
//!   tarball is presented as if it held a Docker v2 schema 2 manifest, so the converter walks
//!   every source the same way.
//! - [`ImageNode`] parses a root or child blob into an [`Index`] or a [`Manifest`]; [`PlatformFilter`]
//!   selects index entries; [`Manifest::to_oci_json`], [`Index::to_oci_json`] and [`rewrite_config`]
//!   build the converted image's JSON while keeping fields lazypull does not interpret.
//! - [`LayoutDest`] stages blobs beside the destination directory and commits an OCI layout
//!   atomically: until [`LayoutDest::commit`], the destination is left as it was.
//!
//! ```no_run
//! use lazypull_converter::oci::{open_source, ImageNode, ImageRef};
//! let src = open_source(&"oci:/tmp/layout:latest".parse::<ImageRef>()?)?;
//! let root = src.root()?;
//! match ImageNode::read(src.as_ref(), &root)? {
//!     ImageNode::Index(index) => println!("{} manifests", index.descriptors.len()),
//!     ImageNode::Manifest(m) => println!("{} layers", m.layers.len()),
//! }
//! # Ok::<(), lazypull_converter::Error>(())
//! ```

mod config;
mod descriptor;
#[cfg(feature = "write")]
mod dest;
#[cfg(feature = "write")]
mod docker_archive;
mod image;
mod layout;
pub mod media;
mod reference;
mod source;
#[cfg(feature = "write")]
mod tar_index;

pub use config::rewrite_config;
pub use descriptor::{Descriptor, Platform};
#[cfg(feature = "write")]
pub use dest::{BlobWriter, LayoutDest, WrittenBlob};
pub use image::{ImageNode, Index, Manifest, PlatformFilter};
pub use layout::{LayoutFiles, LayoutSource};
#[cfg(feature = "registry")]
pub(crate) use reference::is_tag;
pub use reference::{ArchiveSelector, ImageRef};
#[cfg(feature = "registry")]
pub(crate) use source::check_json_size;
#[cfg(feature = "registry")]
pub use source::open_source_with;
pub use source::{open_source, ImageSource, MAX_JSON_BLOB};

/// The annotation naming a manifest's tag in an OCI layout's `index.json`.
pub use oci_spec::image::ANNOTATION_REF_NAME;

#[cfg(all(test, feature = "write"))]
mod tests;
