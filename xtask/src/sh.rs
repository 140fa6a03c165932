//! The one way xtask runs programs: the command line is echoed and named in errors.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command with inherited output; fails naming it if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let l = line(cmd);
    eprintln!("$ {l}");
    let status = cmd.status().with_context(|| format!("starting `{l}`"))?;
    if !status.success() {
        bail!("`{l}` failed with {status}");
    }
    Ok(())
}

/// Runs a command quietly, returning its stdout; on failure shows the tail of its stderr.
pub fn quiet(cmd: &mut Command) -> Result<String> {
    let l = line(cmd);
    let out = cmd.output().with_context(|| format!("starting `{l}`"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("`{l}` failed with {}:\n{}", out.status, tail.join("\n"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Builds every binary of the workspace (the suites and benches start them).
pub fn build_bins() -> Result<()> {
    run(Command::new("cargo").current_dir(root()).args([
        "build",
        "--workspace",
        "--bins",
        "--quiet",
    ]))
}
