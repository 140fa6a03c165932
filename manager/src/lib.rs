//! The Ferry manager: config, embedded store, fleet view, commands, jobs and the daemon.

pub mod bootramdisk;
pub mod bootserver;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deploy;
pub mod embedded;
pub mod fleet;
pub mod images;
pub mod jobs;
pub mod providers;
pub mod tls;
