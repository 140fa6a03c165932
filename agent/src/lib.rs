//! The Ferry agent: identity, survey, and the loop that heartbeats and runs signed commands.

pub mod config;
pub mod identity;
pub mod ramdisk;
pub mod runner;
pub mod state;
pub mod survey;
