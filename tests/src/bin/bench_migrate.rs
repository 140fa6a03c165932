//! `cargo xtask bench migrate`: total and per-phase seconds of `ferry migrate` — the
//! BIOS web server captured live while a UEFI target with a larger disk and another
//! MAC PXE-boots the ramdisk; the job finds the target by its MAC, deploys the
//! capture, and the target reboots into the migrated system until its nginx answers
//! with the source's page — all under QEMU TCG on this machine. Appends a table to
//! `docs/benchmarks.md`.

use anyhow::{Context, Result, ensure};
use ferry_tests::bench::{machine, now_utc};
use ferry_tests::debian::{WEB_MARKER, web_source_disk};
use ferry_tests::vm::Manager;
use ferry_tests::webmove::{Firmware, Target, migrate};
use serde_json::Value;

/// Seconds between two Unix-ms fields.
fn secs(from: &Value, to: &Value) -> f64 {
    to.as_u64()
        .unwrap_or(0)
        .saturating_sub(from.as_u64().unwrap_or(0)) as f64
        / 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    web_source_disk()?;
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let target = Target::larger_uefi();
    let (d, job) = migrate(&m, work.path(), Firmware::Bios, &target, "web").await?;
    ensure!(d.http_get().await?.trim() == WEB_MARKER, "the page differs");
    let step = |name: &str| {
        job["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["step"] == name))
            .with_context(|| format!("no step {name} in {job:#}"))
    };
    let (capture, found, deploy) = (step("capture")?, step("target")?, step("deploy")?);
    let created = &job["spec"]["created_ms"];
    let bytes: u64 = capture["status"]["outcome"]["filesystems"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["bytes"].as_u64()).sum())
        .unwrap_or(0);

    let mut table = format!(
        "\n## migrate — {} — {}\n\n\
         `ferry migrate` of the BIOS web server (Debian 12: ext4 `/`, xfs `/var`, {} MB \
         captured live) onto a UEFI target (5 GiB disk, other MAC) that PXE-boots the \
         ramdisk while the source is captured, found by its MAC; every VM one CPU under \
         QEMU TCG, the manager's embedded store on this machine. Times from the job's \
         events.\n\n\
         | phase | seconds |\n|---|---|\n",
        now_utc(),
        machine(),
        bytes / 1_000_000,
    );
    table.push_str(&format!(
        "| capture (command sent → answer recorded) | {:.1} |\n\
         | target's ramdisk agent found, from the job's start (meanwhile) | {:.1} |\n",
        secs(&capture["started_ms"], &capture["ended_ms"]),
        secs(created, &found["ended_ms"]),
    ));
    let steps: Vec<(String, f64)> = deploy["status"]["outcome"]["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["step"].as_str().unwrap_or("?").to_string(),
                        s["millis"].as_u64().unwrap_or(0) as f64 / 1000.0,
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    table.push_str(&format!(
        "| deploy (command sent → answer recorded) | {:.1} |\n",
        secs(&deploy["started_ms"], &deploy["ended_ms"])
    ));
    for (name, s) in &steps {
        table.push_str(&format!("| deploy: {name} | {s:.1} |\n"));
    }
    table.push_str(&format!(
        "| job (made → deployed) | {:.1} |\n\
         | `ferry migrate` to the migrated system's boot report | {:.1} |\n",
        secs(created, &job["ended_ms"]),
        d.to_booted,
    ));
    print!("{table}");
    ferry_tests::bench::append(&table)?;
    Ok(())
}
