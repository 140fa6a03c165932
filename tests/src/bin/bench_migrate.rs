//! `cargo xtask bench migrate`: total and per-phase seconds of `ferry migrate` — the
//! BIOS web server captured live while a UEFI target with a larger disk and another
//! MAC PXE-boots the ramdisk; the job finds the target by its MAC, deploys the
//! capture, and the target reboots into the migrated system until its nginx answers
//! with the source's page — all under QEMU TCG on this machine. Appends a table to
//! `docs/benchmarks.md`.

use anyhow::{Result, ensure};
use ferry_tests::bench::{machine, now_utc};
use ferry_tests::debian::{WEB_MARKER, web_source_disk};
use ferry_tests::webmove::{self, Firmware, Follow, Target, migrate};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    web_source_disk()?;
    let work = tempfile::tempdir()?;
    let m = webmove::manager(work.path())?;
    let target = Target::larger_uefi();
    let (d, job) = migrate(
        &m,
        work.path(),
        Firmware::Bios,
        &target,
        "web",
        Follow::Json,
    )
    .await?;
    ensure!(d.http_get().await?.trim() == WEB_MARKER, "the page differs");
    let mut table = format!(
        "\n## migrate — {} — {}\n\n\
         `ferry migrate` of the BIOS web server (Debian 12: ext4 `/`, xfs `/var`, {} MB \
         captured live) onto a UEFI target (5 GiB disk, other MAC) that the manager's QEMU \
         provider makes and that PXE-boots the ramdisk while the source is captured, found \
         by its MAC; every VM one CPU under QEMU TCG, the manager's embedded store on this \
         machine. Times from the job's events.\n\n\
         | phase | seconds |\n|---|---|\n",
        now_utc(),
        machine(),
        webmove::captured_bytes(&job) / 1_000_000,
    );
    for (phase, s) in webmove::phases(&job, d.to_booted)? {
        table.push_str(&format!("| {phase} | {s:.1} |\n"));
    }
    print!("{table}");
    ferry_tests::bench::append(&table)?;
    Ok(())
}
