//! `cargo xtask test`: install prerequisites, build the binaries the suites start, run
//! the ramdisk, run every suite with the real servers and VMs required (a missing one
//! fails, never skips).

use std::process::Command;

use anyhow::Result;

use crate::{deps, sh};

/// Runs every suite; extra arguments go to `cargo test` (e.g. a test name filter).
pub fn run(extra: &[&str]) -> Result<()> {
    suites(&["--workspace"], extra)
}

/// `cargo xtask vm-test`: builds the ramdisk and runs only the QEMU suites.
pub fn vm(extra: &[&str]) -> Result<()> {
    suites(
        &[
            "-p",
            "ferry-tests",
            "--test",
            "vm_boot",
            "--test",
            "vm_faults",
            "--test",
            "vm_source",
            "--test",
            "vm_lvm_root",
            "--test",
            "vm_deploy",
            "--test",
            "vm_migrate",
            "--test",
            "vm_bootswap",
        ],
        extra,
    )
}

fn suites(which: &[&str], extra: &[&str]) -> Result<()> {
    let tools = deps::ensure()?;
    sh::build_bins()?;
    // The suites boot this ramdisk; zstd -3 builds in seconds and boots as fast as -19.
    crate::ramdisk::run(&["--level", "3"])?;
    sh::run(
        Command::new("cargo")
            .current_dir(sh::root())
            .env("FERRY_REQUIRE_SERVERS", "1")
            .env("FERRY_REQUIRE_VMS", "1")
            .env("FERRY_MOTO_SERVER", &tools.moto_server)
            .args(["test", "--quiet"])
            .args(which)
            .args(extra),
    )
}
