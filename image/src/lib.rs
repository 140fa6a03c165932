//! Ferry's image library.
//!
//! A library is a restic-format repository (format 2: compressed, encrypted,
//! authenticated, deduplicated) in a folder, on S3 or on WebDAV, read and written
//! through Ferry's own stores ([`backend`]) with `rustic_core`, so any restic or
//! rustic client can list, check and restore from it. An image is one manifest per
//! capture plus one snapshot per captured filesystem ([`ferry_model::image`]).
//!
//! - [`library`]: where a library is, opening and creating it, listing images.
//! - [`capture`]: trees into snapshots (Ferry's own `archive`r, in restic's format
//!   written by [`pack`]), then the manifest; a tree whose walk has the parent's
//!   `fingerprint` keeps its parent snapshot's tree.
//! - [`restore`]: a snapshot back into a directory with full metadata, every
//!   failure counted.
//! - [`progress`]: bytes, files, rate and ETA for terminals and status files.

mod archive;
pub mod backend;
pub mod capture;
mod fingerprint;
pub mod library;
pub mod pack;
pub mod progress;
pub mod restore;
mod workers;

pub use capture::{CaptureRequest, FsSource, Hold, abandon, capture, capture_surveyed};
pub use ferry_model::image::RestoreReport;
pub use library::{ImageSummary, Library, Location};
pub use progress::{Cancelled, Meter, Report};
pub use restore::{RestoreRequest, restore};
