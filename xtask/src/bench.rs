//! `cargo xtask bench`: runs the benchmark binaries (`mailbox` in release mode;
//! `ramdisk` builds the real ramdisk first, then boots it every way; `survey` times the
//! survey in a ramdisk VM and on this machine next to lshw; `image` captures and
//! restores next to restic and tar|zstd).

use std::ffi::OsString;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{deps, sh};

/// Builds the binaries the guests and benches use, then runs the tests crate's program
/// `name` (a bench, the demo).
pub fn tests_bin(name: &str) -> Result<()> {
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

/// Runs the bench binary `name` built in release mode, with `env` and arguments `rest`.
fn release_bin(name: &str, env: &[(&str, OsString)], rest: &[&str]) -> Result<()> {
    sh::run(
        Command::new("cargo")
            .current_dir(sh::root())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args([
                "run",
                "--release",
                "--quiet",
                "-p",
                "ferry-tests",
                "--bin",
                name,
                "--",
            ])
            .args(rest),
    )
}

/// What a bench with guests needs: the Debian packages, and a ramdisk (built when
/// there is none).
pub fn guest_prerequisites() -> Result<()> {
    deps::ensure()?;
    if !sh::root().join("target/ferry/vmlinux").is_file() {
        crate::ramdisk::run(&["--level", "3"])?;
    }
    Ok(())
}

/// Runs the named benchmark.
pub fn run(args: &[&str]) -> Result<()> {
    match args {
        ["mailbox", rest @ ..] => {
            let tools = deps::ensure()?;
            release_bin(
                "bench-mailbox",
                &[("FERRY_MOTO_SERVER", tools.moto_server.into_os_string())],
                rest,
            )
        }
        ["ramdisk", rest @ ..] => {
            deps::ensure()?;
            // The real artifact: all drivers, zstd -19.
            crate::ramdisk::run(rest)?;
            tests_bin("bench-ramdisk")
        }
        ["survey"] => {
            guest_prerequisites()?;
            tests_bin("bench-survey")
        }
        ["image"] => {
            deps::ensure()?;
            let musl = crate::ramdisk::build_agent()?;
            sh::run(Command::new("cargo").current_dir(sh::root()).args([
                "build",
                "--release",
                "--quiet",
                "-p",
                "ferry-agent",
            ]))?;
            let glibc = sh::root().join("target/release/ferry-agent");
            release_bin(
                "bench-image",
                &[
                    ("FERRY_AGENT_MUSL", musl.into_os_string()),
                    ("FERRY_AGENT_GLIBC", glibc.into_os_string()),
                ],
                &[],
            )
        }
        ["deploy"] => {
            guest_prerequisites()?;
            tests_bin("bench-deploy")
        }
        ["migrate"] => {
            guest_prerequisites()?;
            tests_bin("bench-migrate")
        }
        ["reboot"] => {
            guest_prerequisites()?;
            tests_bin("bench-reboot")
        }
        _ => bail!(
            "usage: cargo xtask bench mailbox [--agents N] [--seconds S]\n       cargo xtask bench ramdisk [ramdisk options]\n       cargo xtask bench survey\n       cargo xtask bench image\n       cargo xtask bench deploy\n       cargo xtask bench migrate\n       cargo xtask bench reboot"
        ),
    }
}
