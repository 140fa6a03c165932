//! Deploying an image onto a target from the ramdisk: the storage layout first
//! (`storage`), then restore, the migrated system's configuration (`configure`)
//! and its drivers, initramfs and boot loader (`boot`).

pub mod boot;
pub mod configure;
pub mod storage;
