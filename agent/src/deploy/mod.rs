//! Deploying an image onto a target from the ramdisk: the storage layout first
//! (`storage`), then restore, configuration and boot loader.

pub mod storage;
