//! The Ferry agent: identity, survey, and the loop that heartbeats and runs signed commands.

pub mod bootswap;
pub mod capture;
pub mod config;
pub mod deploy;
pub mod identity;
pub mod library;
pub mod ramdisk;
pub mod runner;
pub mod state;
pub mod survey;
