//! `cargo xtask bench reboot`: seconds from `ferry boot-ramdisk` to the ramdisk agent's
//! report, per method, on the cloud server ([`ferry_tests::cloud`]) under QEMU TCG —
//! side by side with the server's own boot (VM start to its installed agent's first
//! survey), which is what an ordinary reboot costs. Appends a table to
//! `docs/benchmarks.md`.

use std::time::Instant;

use anyhow::Result;
use ferry_tests::bench::{machine, now_utc};
use ferry_tests::cloud::{self, Start};
use ferry_tests::vm::Manager;
use ferry_tests::webmove::Firmware;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    ferry_tests::debian::web_source_disk()?;
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let mut rows = Vec::new();
    for (start, method) in [
        (Start::Firmware(Firmware::Bios), "grub-once"),
        (Start::Firmware(Firmware::Uefi), "grub-once"),
        (Start::Firmware(Firmware::Bios), "kexec"),
        (Start::DirectKernel, "init"),
    ] {
        let dir = work.path().join(format!("{}-{method}", start.name()));
        let t = Instant::now();
        let mut s = cloud::start(&m, &dir, start).await?;
        let own_boot = t.elapsed().as_secs_f64();
        let e = cloud::enter(&m, &s, method).await?;
        let making = e.outcome["answer_secs"].as_f64().unwrap_or(0.0);
        let mb = e.outcome["bytes"].as_f64().unwrap_or(0.0) / 1e6;
        eprintln!("{} {method}: {:.1} s", start.name(), e.secs);
        rows.push(format!(
            "| {method} ({}) | {:.1} | {making:.1} | {mb:.1} | {own_boot:.1} | {:.2}x |\n",
            start.name(),
            e.secs,
            e.secs / own_boot
        ));
        m.ferry(&["poweroff", &s.id])?;
        s.vm.wait_exit(std::time::Duration::from_secs(120)).await?;
    }
    let mut table = format!(
        "\n## reboot — {} — {}\n\n\
         `ferry boot-ramdisk` on the debootstrapped cloud server (Debian 12, static address, \
         installed agent; one CPU under QEMU TCG): seconds from the command to the ramdisk \
         agent's status (making the ramdisk, rebooting, the ramdisk bringing up the \
         server's own network), beside the server's own boot from VM start to its installed \
         agent's survey (what an ordinary reboot costs).\n\n\
         | method (start) | command to ramdisk agent, s | of which making the ramdisk, s | ramdisk MB | own boot to agent, s | ratio |\n\
         |---|---|---|---|---|---|\n",
        now_utc(),
        machine(),
    );
    for r in rows {
        table.push_str(&r);
    }
    print!("{table}");
    ferry_tests::bench::append(&table)?;
    Ok(())
}
