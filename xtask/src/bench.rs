//! `cargo xtask bench`: runs the benchmark binaries (`mailbox` in release mode;
//! `ramdisk` builds the real ramdisk first, then boots it every way).

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
        ["ramdisk", rest @ ..] => {
            deps::ensure()?;
            // The real artifact: all drivers, zstd -19.
            crate::ramdisk::run(rest)?;
            sh::build_bins()?;
            sh::run(Command::new("cargo").current_dir(sh::root()).args([
                "run",
                "--quiet",
                "-p",
                "ferry-tests",
                "--bin",
                "bench-ramdisk",
            ]))
        }
        _ => bail!(
            "usage: cargo xtask bench mailbox [--agents N] [--seconds S]\n       cargo xtask bench ramdisk [ramdisk options]"
        ),
    }
}
