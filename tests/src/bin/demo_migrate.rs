//! `cargo xtask demo`: Ferry's main job on embedded defaults. Builds (once, cached
//! under `~/.cache/ferry`) a small Debian 12 web server as the source VM, starts a
//! manager with its embedded store, boot server and a QEMU provider, and runs `ferry
//! migrate --direct` of the running source onto a new UEFI machine the provider makes,
//! which PXE-boots Ferry's ramdisk, is laid out, restored (each filesystem as soon as
//! the capture has written it) and re-wired, and reboots into the migrated system.
//! Ends by fetching the source's page from the migrated target and printing the
//! phases and the total time.

use std::time::Instant;

use anyhow::{Result, ensure};
use ferry_tests::debian::{WEB_MARKER, web_source_disk};
use ferry_tests::webmove::{self, Firmware, Follow, Target, migrate};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let started = Instant::now();
    println!(
        "Ferry demo: a running Debian web server moves onto a new machine (QEMU, TCG).\n\
         [1/3] the source's disk (built once with debootstrap, then cached in ~/.cache/ferry)"
    );
    let disk = web_source_disk()?;
    println!("      {}", disk.display());
    let work = tempfile::Builder::new().prefix("ferry-demo-").tempdir()?;
    println!(
        "[2/3] a manager: `ferry serve` with its embedded store, PXE boot server and QEMU \
         provider ({})",
        work.path().display()
    );
    let m = webmove::manager(work.path())?;
    println!("[3/3] the migration");
    let target = Target::larger_uefi();
    let moved = migrate(
        &m,
        work.path(),
        Firmware::Bios,
        &target,
        "web",
        true,
        Follow::Terminal,
    )
    .await;
    let (d, job) = match moved {
        Ok(done) => done,
        Err(e) => {
            let kept = work.keep();
            anyhow::bail!("{e:#}\nlogs and machines kept in {}", kept.display());
        }
    };
    let page = d.http_get().await?;
    ensure!(
        page.trim() == WEB_MARKER,
        "the migrated page differs: {page}"
    );
    println!(
        "\nthe migrated target answers on its NIC {} (10.0.2.15:80, forwarded to \
         127.0.0.1:{}): {:?}\n\nphases:",
        target.mac,
        d.http_port,
        page.trim()
    );
    for (phase, secs) in webmove::phases(&job, d.to_booted)? {
        println!("  {secs:>8.1} s  {phase}");
    }
    println!(
        "\ndemo done in {:.0} s (source disk and ramdisk builds included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
