//! `cargo xtask bench migrate`: total and per-phase seconds of `ferry migrate`, two-step
//! (captured into the library, then deployed) and direct (captured into the job's own
//! repository, the deploy restoring each filesystem as soon as it is written), side by
//! side — the BIOS web server captured live while a UEFI target with a larger disk and
//! another MAC PXE-boots the ramdisk; the job finds the target by its MAC, deploys the
//! capture, and the target reboots into the migrated system until its nginx answers
//! with the source's page — all under QEMU TCG on this machine. Appends a table to
//! `docs/benchmarks.md`.

use anyhow::{Result, ensure};
use ferry_tests::bench::{machine, now_utc};
use ferry_tests::debian::{WEB_MARKER, web_source_disk};
use ferry_tests::webmove::{self, Firmware, Follow, Target, migrate};

/// One migration on a manager of its own: the phases and the bytes captured.
async fn run(direct: bool) -> Result<(Vec<(String, f64)>, u64)> {
    let work = tempfile::tempdir()?;
    let m = webmove::manager(work.path())?;
    let target = Target::larger_uefi();
    let (d, job) = migrate(
        &m,
        work.path(),
        Firmware::Bios,
        &target,
        "web",
        direct,
        Follow::Json,
    )
    .await?;
    ensure!(d.http_get().await?.trim() == WEB_MARKER, "the page differs");
    Ok((
        webmove::phases(&job, d.to_booted)?,
        webmove::captured_bytes(&job),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    web_source_disk()?;
    let (two_step, bytes) = run(false).await?;
    let (direct, _) = run(true).await?;
    let mut table = format!(
        "\n## migrate — {} — {}\n\n\
         `ferry migrate` of the BIOS web server (Debian 12: ext4 `/`, xfs `/var`, {} MB \
         captured live) onto a UEFI target (5 GiB disk, other MAC) that the manager's QEMU \
         provider makes and that PXE-boots the ramdisk while the source is captured, found \
         by its MAC; every VM one CPU under QEMU TCG, the manager's embedded store on this \
         machine. Two-step: captured into the library, then deployed; `--direct`: captured \
         into the job's own repository, the deploy sent once the capture has written its \
         layout and restoring each filesystem as soon as it is written, the repository \
         discarded at the end. Times from the job's events; the ratio is direct / \
         two-step. No rival does this move in one command here to compare with.\n\n\
         | phase | two-step s | direct s | direct / two-step |\n|---|---|---|---|\n",
        now_utc(),
        machine(),
        bytes / 1_000_000,
    );
    let mut phases: Vec<&str> = two_step.iter().map(|(p, _)| p.as_str()).collect();
    for (p, _) in &direct {
        if !phases.contains(&p.as_str()) {
            phases.push(p);
        }
    }
    let of =
        |run: &[(String, f64)], phase: &str| run.iter().find(|(p, _)| p == phase).map(|(_, s)| *s);
    for phase in phases {
        let (a, b) = (of(&two_step, phase), of(&direct, phase));
        let cell = |s: Option<f64>| s.map_or("—".to_string(), |s| format!("{s:.1}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if a >= 1.0 => format!("{:.2}", b / a),
            _ => "—".into(),
        };
        table.push_str(&format!(
            "| {phase} | {} | {} | {ratio} |\n",
            cell(a),
            cell(b)
        ));
    }
    print!("{table}");
    ferry_tests::bench::append(&table)?;
    Ok(())
}
