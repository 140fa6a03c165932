//! Ramdisk assembly for Ferry: a newc cpio writer, kernel module selection with full
//! dependency closure, the ELF library closure of tools, and the build of the Ferry
//! ramdisk from a declarative manifest.
//!
//! Without the default `build` feature only [`cpio`], [`modules`], [`drivers`] and
//! [`info`] are compiled: the agent uses them at boot and to make its server's own
//! ramdisk, the manager to add configs to a ramdisk.

pub mod cpio;
pub mod drivers;
pub mod info;
pub mod modules;

#[cfg(feature = "build")]
pub mod build;
#[cfg(feature = "build")]
pub mod elf;
#[cfg(feature = "build")]
pub mod kernel;
#[cfg(feature = "build")]
pub mod manifest;
