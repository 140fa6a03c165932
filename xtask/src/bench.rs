//! `cargo xtask bench`: runs the benchmark binaries (`mailbox` in release mode;
//! `ramdisk` builds the real ramdisk first, then boots it every way; `survey` times the
//! survey in a ramdisk VM and on this machine next to lshw).

use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, sh};

/// Builds the binaries the guests and benches use, then runs the bench binary `name`.
fn bench_bin(name: &str) -> Result<()> {
    sh::build_bins()?;
    sh::run(Command::new("cargo").current_dir(sh::root()).args([
        "run",
        "--quiet",
        "-p",
        "ferry-tests",
        "--bin",
        name,
    ]))
}

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
            bench_bin("bench-ramdisk")
        }
        ["survey"] => {
            deps::ensure()?;
            if !sh::root().join("target/ferry/vmlinux").is_file() {
                crate::ramdisk::run(&["--level", "3"])?;
            }
            bench_bin("bench-survey")
        }
        _ => bail!(
            "usage: cargo xtask bench mailbox [--agents N] [--seconds S]\n       cargo xtask bench ramdisk [ramdisk options]\n       cargo xtask bench survey"
        ),
    }
}
