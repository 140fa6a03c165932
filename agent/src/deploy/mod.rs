//! Deploying an image onto a target from the ramdisk: the storage layout first
//! (`storage`), then restore, the migrated system's configuration (`configure`)
//! and its boot loader.

pub mod configure;
pub mod storage;
