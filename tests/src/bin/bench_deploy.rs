//! `cargo xtask bench deploy`: seconds per deploy step for the first migration case —
//! the BIOS web server (ext4 root, xfs `/var`, static address) captured live, deployed
//! onto a PXE-booted UEFI target with a larger disk and another MAC, rebooted into
//! the migrated system until its nginx answers with the source's page — all under
//! QEMU TCG on this machine. Appends a table to `docs/benchmarks.md`.

use std::time::Instant;

use anyhow::{Result, ensure};
use ferry_tests::bench::{machine, now_utc};
use ferry_tests::debian::{WEB_MARKER, web_source_disk};
use ferry_tests::vm::Manager;
use ferry_tests::webmove::{Firmware, Target, Via, capture_source, deploy_target};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    web_source_disk()?;
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let t = Instant::now();
    let (_, capture) = capture_source(&m, work.path(), Firmware::Bios, "web").await?;
    let captured = t.elapsed().as_secs_f64();
    let target = Target::larger_uefi();
    let t = Instant::now();
    let d = deploy_target(&m, work.path(), &target, "web", |p| p, Via::Deploy).await?;
    let pxe_and_deploy = t.elapsed().as_secs_f64();
    ensure!(d.http_get().await?.trim() == WEB_MARKER, "the page differs");
    let bytes: u64 = capture["filesystems"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["bytes"].as_u64()).sum())
        .unwrap_or(0);

    let mut table = format!(
        "\n## deploy — {} — {}\n\n\
         BIOS web server (Debian 12: ext4 `/`, xfs `/var`, {} MB captured) onto a UEFI \
         target (5 GiB disk, other MAC) PXE-booted into the ramdisk; every VM one CPU under \
         QEMU TCG, the manager's embedded store on this machine.\n\n\
         | step | seconds |\n|---|---|\n",
        now_utc(),
        machine(),
        bytes / 1_000_000,
    );
    table.push_str(&format!(
        "| live capture of the running source (boot, then `ferry capture`) | {captured:.1} |\n"
    ));
    for s in &d.steps {
        table.push_str(&format!(
            "| deploy: {} | {:.1} |\n",
            s.step,
            s.millis as f64 / 1000.0
        ));
    }
    let steps: f64 = d.steps.iter().map(|s| s.millis as f64 / 1000.0).sum();
    table.push_str(&format!(
        "| deploy steps together | {steps:.1} |\n\
         | reboot into the migrated system until its boot report | {:.1} |\n\
         | target start to its boot report (PXE, ramdisk, deploy, reboot) | {pxe_and_deploy:.1} |\n",
        d.to_booted - steps,
    ));
    print!("{table}");
    ferry_tests::bench::append(&table)?;
    Ok(())
}
