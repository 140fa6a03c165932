//! `cargo xtask test`: install prerequisites, build the binaries the suites start, run
//! every suite with the real servers required (a missing server fails, never skips).

use std::process::Command;

use anyhow::Result;

use crate::{deps, sh};

/// Runs every suite; extra arguments go to `cargo test` (e.g. a test name filter).
pub fn run(extra: &[&str]) -> Result<()> {
    let tools = deps::ensure()?;
    sh::run(Command::new("cargo").current_dir(sh::root()).args([
        "build",
        "--workspace",
        "--bins",
        "--quiet",
    ]))?;
    sh::run(
        Command::new("cargo")
            .current_dir(sh::root())
            .env("FERRY_REQUIRE_SERVERS", "1")
            .env("FERRY_MOTO_SERVER", &tools.moto_server)
            .args(["test", "--workspace", "--quiet"])
            .args(extra),
    )
}
