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
