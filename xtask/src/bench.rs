//! `cargo xtask bench`: runs the benchmark binaries in release mode.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, sh};

/// Runs the named benchmark.
pub fn run(args: &[&str]) -> Result<()> {
    match args {
        ["mailbox", rest @ ..] => {
            let tools = deps::ensure()?;
            sh::run(
                Command::new("cargo")
                    .current_dir(sh::root())
                    .env("FERRY_MOTO_SERVER", &tools.moto_server)
                    .args([
                        "run",
                        "--release",
                        "--quiet",
                        "-p",
                        "ferry-tests",
                        "--bin",
                        "bench-mailbox",
                        "--",
                    ])
                    .args(rest),
            )
        }
        _ => bail!("usage: cargo xtask bench mailbox [--agents N] [--seconds S]"),
    }
}
