//! Installs what the test suites need, idempotently and quietly: Debian packages for
//! Apache mod_dav, nftables and network namespaces, and moto as the independent S3 server.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::sh;

/// Debian packages the suites use, with a program that shows each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("apache2", "/usr/sbin/apache2"),
    ("nftables", "/usr/sbin/nft"),
    ("iproute2", "/usr/sbin/ip"),
    ("openssl", "/usr/bin/openssl"),
    ("python3-venv", ""),
];

/// Paths of installed tools, passed to the tests as environment variables.
pub struct Tools {
    /// The `moto_server` program.
    pub moto_server: PathBuf,
}

fn missing_packages() -> Vec<&'static str> {
    PACKAGES
        .iter()
        .filter(|(pkg, probe)| {
            if probe.is_empty() {
                !Command::new("dpkg")
                    .args(["-s", pkg])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            } else {
                !std::path::Path::new(probe).exists()
            }
        })
        .map(|(pkg, _)| *pkg)
        .collect()
}

/// Installs whatever is missing and returns where the tools are.
pub fn ensure() -> Result<Tools> {
    let missing = missing_packages();
    if !missing.is_empty() {
        eprintln!("xtask: installing Debian packages {}", missing.join(" "));
        sh::quiet(Command::new("apt-get").args(["update", "-qq"]))?;
        sh::quiet(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    let moto_server = ensure_moto()?;
    Ok(Tools { moto_server })
}

/// moto in its own venv under `~/.cache/ferry`, so no system Python is touched and a
/// fresh clone reuses it.
fn ensure_moto() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| sh::root().join("target"));
    let venv = cache.join("ferry/moto-venv");
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    eprintln!("xtask: installing moto[server] into {}", venv.display());
    sh::quiet(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("making a Python venv for moto (needs python3-venv)")?;
    sh::quiet(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        "moto[server]==5.*",
    ]))?;
    Ok(server)
}
