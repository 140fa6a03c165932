//! What the benchmark binaries share: the machine line and the bench document.

use std::path::{Path, PathBuf};

/// "N cores (CPU model), KVM-less VM".
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cores} cores ({cpu}), KVM-less VM")
}

/// The current UTC time, `YYYY-MM-DD HH:MM`.
pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `docs/benchmarks.md`.
pub fn doc_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/benchmarks.md")
}

/// Appends a table to `docs/benchmarks.md`.
pub fn append(table: &str) -> std::io::Result<()> {
    let path = doc_path();
    let mut doc = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench`; newest last.\n".into()
    });
    doc.push_str(table);
    std::fs::write(&path, doc)?;
    eprintln!("appended to {}", path.display());
    Ok(())
}

/// A manager with boot files, ready for one benchmark guest.
pub struct GuestRig {
    /// The work folder (removed on drop).
    pub work: tempfile::TempDir,
    /// The manager (embedded store and boot server).
    pub m: crate::vm::Manager,
    /// Its boot files (PXE tree, personalised initrd, ISO).
    pub boot: PathBuf,
    /// The guest's serial console log.
    pub console: PathBuf,
    /// QEMU's base options (machine, memory, disk, console).
    pub args: Vec<String>,
}

impl GuestRig {
    /// Starts a manager on the host loopback and writes its boot files.
    pub fn new() -> anyhow::Result<GuestRig> {
        let work = tempfile::tempdir()?;
        let m = crate::vm::Manager::start(work.path(), None)?;
        let boot = work.path().join("boot");
        m.boot_files(&boot, "panic=-1")?;
        let console = work.path().join("console.log");
        let args = crate::vm::base_args(work.path(), &console)?;
        Ok(GuestRig {
            work,
            m,
            boot,
            console,
            args,
        })
    }

    /// Starts QEMU with the base options and `extra`.
    pub fn start(&self, extra: &[String]) -> anyhow::Result<crate::vm::Qemu> {
        let mut args = self.args.clone();
        args.extend_from_slice(extra);
        crate::vm::Qemu::start(self.work.path(), &self.console, &args, None)
    }
}
