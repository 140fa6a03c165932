//! `cargo xtask bench survey`: how long the full survey takes — inside the Ferry ramdisk
//! on a QEMU TCG guest (the slowest place it runs; target ≤ 2 s), and on the build
//! machine next to `lshw -json`, the inventory tool an administrator would otherwise
//! run (hardware only). Appends a table to `docs/benchmarks.md`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_model::survey::Survey;
use ferry_tests::bench::{GuestRig, machine, now_utc};
use ferry_tests::procs::bin;

const RUNS: usize = 3;

/// Survey times (ms, as the agent measured them) inside a ramdisk VM, via `ferry survey`.
async fn in_ramdisk() -> Result<Vec<u64>> {
    let g = GuestRig::new()?;
    let m = &g.m;
    let mut args = ferry_tests::vm::ramdisk_boot(&g.boot);
    args.extend(ferry_tests::vm::user_nic());
    let mut vm = g.start(&args)?;
    let agent = m
        .wait_ramdisk_agent(&mut vm, Duration::from_secs(240))
        .await?;
    let id = agent["id"].as_str().context("agent id")?.to_string();
    // Drivers loaded after the agent started: wait until the survey after them is in.
    m.wait_agent_status(&id, Duration::from_secs(120), |v| {
        v["status"]["boot"]["loaded"]
            .as_array()
            .is_some_and(|l| l.iter().any(|m| m == "xfs"))
            && v["status"]["survey"]["hardware"]["cpu"]["threads"].as_u64() >= Some(1)
    })
    .await?;
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let text = m.ferry(&["survey", &id, "--json", "--timeout", "120"])?;
        let s: Survey = serde_json::from_str(&text)?;
        let problems = s.validate();
        if !problems.is_empty() {
            bail!("the ramdisk survey is inconsistent: {problems:?}");
        }
        times.push(s.took_ms);
    }
    m.ferry(&["poweroff", &id, "--timeout", "120"])?;
    vm.wait_exit(Duration::from_secs(120)).await?;
    times.sort();
    Ok(times)
}

/// Wall-clock milliseconds of a command, best of RUNS; `None` when it is not installed.
fn wall_ms(program: &str, args: &[&str]) -> Result<Option<u64>> {
    let mut best = u64::MAX;
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = match Command::new(program).args(args).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !out.status.success() {
            bail!(
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        best = best.min(t.elapsed().as_millis() as u64);
    }
    Ok(Some(best))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let vm = in_ramdisk().await?;
    eprintln!("ramdisk VM: survey took {vm:?} ms");
    let agent = bin("ferry-agent");
    let ferry = wall_ms(&agent.to_string_lossy(), &["survey", "--json"])?.unwrap_or(0);
    let lshw = wall_ms("lshw", &["-json", "-quiet"])?;
    eprintln!("build machine: ferry-agent survey {ferry} ms, lshw {lshw:?} ms");
    let lshw_cell = match lshw {
        Some(l) => format!("{l} ms | {:.2}×", ferry as f64 / l.max(1) as f64),
        None => "not installed | —".into(),
    };
    let t = format!(
        "\n### Survey — {} UTC, {}\n\n\
         | where | Ferry full survey (best / worst of {RUNS}) | vs the 2 s target | `lshw -json` (hardware only) | Ferry / lshw |\n|---|---|---|---|---|\n\
         | Ferry ramdisk, QEMU TCG guest (1 vCPU, 1 GiB), measured by the agent | {} ms / {} ms | {:.2}× | — | — |\n\
         | build machine, wall clock of `ferry-agent survey --json` (best of {RUNS}) | {ferry} ms | {:.2}× | {lshw_cell} |\n",
        now_utc(),
        machine(),
        vm[0],
        vm[vm.len() - 1],
        vm[vm.len() - 1] as f64 / 2000.0,
        ferry as f64 / 2000.0,
    );
    print!("{t}");
    ferry_tests::bench::append(&t)?;
    Ok(())
}
