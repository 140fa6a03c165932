//! `cargo xtask ramdisk`: builds the static agent, the Ferry ramdisk and its boot media
//! into `target/ferry/`: `vmlinuz`, `initrd.zst`, `boot.ipxe`, `tftp/` (BIOS and UEFI
//! PXE), `ferry.iso` (BIOS + UEFI) and `ramdisk.json` (what went in, sizes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ferry_initramfs::build::{self, DriverSet, Inputs};
use ferry_initramfs::manifest::Manifest;

use crate::sh;

/// The musl target the agent is built for.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Options of `cargo xtask ramdisk`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kernel image (default: the newest /boot/vmlinuz-*).
    pub kernel: Option<PathBuf>,
    /// Its module folder (default: /lib/modules/<release of the kernel>).
    pub modules: Option<PathBuf>,
    /// Agent config to bake in.
    pub config: Option<PathBuf>,
    /// Driver set.
    pub drivers: DriverSet,
    /// Modules to leave out.
    pub exclude: Vec<String>,
    /// Copy firmware.
    pub firmware: bool,
    /// Manifest file (default: the shipped one).
    pub manifest: Option<PathBuf>,
    /// zstd level.
    pub level: i32,
    /// Output folder.
    pub out: PathBuf,
    /// Extra kernel parameters for boot.ipxe and the ISO.
    pub append: String,
}

const USAGE: &str = "usage: cargo xtask ramdisk [--kernel FILE] [--modules DIR] [--config FILE]
    [--drivers all|virtio|pci:VVVV:DDDD,...] [--exclude-module NAME]... [--firmware]
    [--manifest FILE] [--level 1-22] [--append \"PARAMS\"] [--out DIR]";

impl Options {
    /// Parses the task's arguments.
    pub fn parse(args: &[&str]) -> Result<Self> {
        let mut o = Options {
            kernel: None,
            modules: None,
            config: None,
            drivers: DriverSet::All,
            exclude: Vec::new(),
            firmware: false,
            manifest: None,
            level: 19,
            out: sh::root().join("target/ferry"),
            append: String::new(),
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .map(|s| s.to_string())
                    .with_context(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match *flag {
                "--kernel" => o.kernel = Some(value()?.into()),
                "--modules" => o.modules = Some(value()?.into()),
                "--config" => o.config = Some(value()?.into()),
                "--drivers" => o.drivers = value()?.parse()?,
                "--exclude-module" => o.exclude.push(value()?),
                "--firmware" => o.firmware = true,
                "--manifest" => o.manifest = Some(value()?.into()),
                "--level" => {
                    o.level = value()?
                        .parse()
                        .context("--level takes a number from 1 to 22")?;
                    anyhow::ensure!(
                        (1..=22).contains(&o.level),
                        "--level takes a number from 1 to 22"
                    );
                }
                "--append" => o.append = value()?,
                "--out" => o.out = value()?.into(),
                other => bail!("unknown option {other}\n{USAGE}"),
            }
        }
        Ok(o)
    }
}

/// The newest kernel image in /boot.
fn default_kernel() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop().context(
        "no kernel in /boot (vmlinuz-*); install one (Debian: linux-image-amd64) or pass --kernel FILE",
    )
}

/// Builds the static musl agent with the size profile; returns its path.
pub fn build_agent() -> Result<PathBuf> {
    let installed = sh::quiet(Command::new("rustup").args(["target", "list", "--installed"]))
        .unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == MUSL) {
        sh::run(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    sh::run(Command::new("cargo").current_dir(sh::root()).args([
        "build",
        "--quiet",
        "--profile",
        "agent",
        "--target",
        MUSL,
        "-p",
        "ferry-agent",
    ]))?;
    Ok(sh::root().join(format!("target/{MUSL}/agent/ferry-agent")))
}

/// Writes the uncompressed kernel for PVH direct boot; its size, or `None` (with a
/// warning) when this kernel cannot be booted that way.
fn write_vmlinux(kernel: &Path, dest: &Path) -> Option<u64> {
    let _ = std::fs::remove_file(dest);
    let made = std::fs::read(kernel)
        .with_context(|| format!("reading {}", kernel.display()))
        .and_then(|bz| ferry_initramfs::kernel::vmlinux(&bz))
        .and_then(|elf| {
            anyhow::ensure!(
                ferry_initramfs::kernel::has_pvh_entry(&elf)?,
                "the kernel has no PVH entry point (CONFIG_PVH)"
            );
            std::fs::write(dest, &elf)?;
            Ok(elf.len() as u64)
        });
    match made {
        Ok(n) => Some(n),
        Err(e) => {
            eprintln!(
                "xtask: warning: no vmlinux for PVH direct boot ({e:#}); boot vmlinuz instead"
            );
            None
        }
    }
}

fn step(what: &str, t: Instant) {
    eprintln!("xtask: {what} ({:.1} s)", t.elapsed().as_secs_f64());
}

/// Builds everything; returns the report written to `ramdisk.json`.
pub fn run(args: &[&str]) -> Result<serde_json::Value> {
    let o = Options::parse(args)?;
    let t = Instant::now();
    let agent = build_agent()?;
    step("agent built", t);
    let kernel = match &o.kernel {
        Some(k) => k.clone(),
        None => default_kernel()?,
    };
    anyhow::ensure!(
        kernel.is_file(),
        "kernel {} does not exist; pass --kernel FILE",
        kernel.display()
    );
    let modules = match &o.modules {
        Some(m) => m.clone(),
        None => {
            let name = kernel
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let release = name.trim_start_matches("vmlinuz-");
            PathBuf::from("/lib/modules").join(release)
        }
    };
    let manifest = match &o.manifest {
        Some(p) => Manifest::load(p)?,
        None => Manifest::parse(ferry_initramfs::manifest::DEFAULT)?,
    };
    let config = match &o.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading agent config {}", p.display()))?;
            ferry_agent::config::AgentConfig::parse(&text)
                .with_context(|| format!("agent config {} is not valid", p.display()))?;
            Some(text)
        }
        None => None,
    };
    let inputs = Inputs {
        manifest,
        modules_dir: modules,
        agent,
        config,
        drivers: o.drivers.clone(),
        exclude: o.exclude.clone(),
        firmware: o.firmware,
        firmware_dir: PathBuf::from("/lib/firmware"),
        level: o.level,
    };
    let ramdisk = build::assemble(&inputs)?;
    let whole = ramdisk.whole()?;
    let raw = whole.to_bytes();
    step(
        &format!(
            "assembled {} modules, {} tools: {:.1} MB",
            ramdisk.info.modules.len(),
            ramdisk.info.tools.len(),
            raw.len() as f64 / 1e6
        ),
        t,
    );
    let zst = build::compress(&whole, o.level)?;
    let base = build::compress(&ramdisk.base, o.level)?;
    step(
        &format!(
            "compressed (zstd -{}): {:.1} MB",
            o.level,
            zst.len() as f64 / 1e6
        ),
        t,
    );

    std::fs::create_dir_all(&o.out)?;
    let out = |name: &str| o.out.join(name);
    std::fs::copy(&kernel, out("vmlinuz"))
        .with_context(|| format!("copying {}", kernel.display()))?;
    std::fs::write(out("initrd.zst"), &zst)?;
    std::fs::write(out(ferry_boot::INITRD_BASE), &base)?;
    let base_info = ferry_initramfs::info::BaseInfo {
        modules: inputs.manifest.modules.clone(),
        tools: ramdisk.info.tools.clone(),
    };
    std::fs::write(
        out(ferry_boot::INITRD_BASE_INFO),
        serde_json::to_vec_pretty(&base_info)?,
    )?;
    let vmlinux = write_vmlinux(&kernel, &out("vmlinux"));
    std::fs::write(
        out("boot.ipxe"),
        ferry_boot::ipxe::boot_script("", &o.append),
    )?;
    let tree = ferry_boot::pxe::write_tree(
        &out("tftp"),
        &out("vmlinuz"),
        &out("initrd.zst"),
        &o.append,
        Path::new(ferry_boot::pxe::IPXE_DIR),
    )?;
    for m in &tree.missing_loaders {
        eprintln!(
            "xtask: warning: {m} is missing (Debian package ipxe); plain-PXE firmware cannot chain to iPXE"
        );
    }
    ferry_boot::iso::make_iso(
        &out("ferry.iso"),
        &out("vmlinuz"),
        &out("initrd.zst"),
        &o.append,
    )?;
    step(
        &format!(
            "wrote vmlinuz, {}initrd.zst, initrd-base.zst, boot.ipxe, tftp/, ferry.iso",
            if vmlinux.is_some() { "vmlinux, " } else { "" }
        ),
        t,
    );
    let report = serde_json::json!({
        "kernel": kernel,
        "kernel_release": ramdisk.info.kernel_release,
        "drivers": ramdisk.info.drivers,
        "modules": ramdisk.info.modules.len(),
        "tools": ramdisk.info.tools,
        "firmware": ramdisk.info.firmware.len(),
        "firmware_missing": ramdisk.firmware_missing.len(),
        "uncompressed_bytes": raw.len(),
        "compressed_bytes": zst.len(),
        "kernel_bytes": std::fs::metadata(&kernel)?.len(),
        "vmlinux_bytes": vmlinux,
        "iso_bytes": std::fs::metadata(out("ferry.iso"))?.len(),
        "zstd_level": o.level,
        "config_baked_in": o.config.is_some(),
    });
    std::fs::write(out("ramdisk.json"), serde_json::to_vec_pretty(&report)?)?;
    eprintln!("xtask: ramdisk ready in {}", o.out.display());
    Ok(report)
}
