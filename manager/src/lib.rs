//! The Ferry manager: config, embedded store, fleet view, commands and the daemon.

pub mod bootserver;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod embedded;
pub mod fleet;
pub mod images;
pub mod tls;
