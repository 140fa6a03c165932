//! A running Debian 12 server whose root filesystem is on LVM (`sys/root`, ext4; `/boot`
//! a plain partition), with a writer changing the root all the time, captured through
//! its mailbox with `ferry capture` and no paths: the root is read from an LVM snapshot
//! that is gone afterwards, `/boot` live with the warning. The root restored on the host
//! is one point in time — the writer's two files at the two ends of the tree agree —
//! taken while the capture ran, and `/usr` equals the Debian tree the disk was built
//! from.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_model::survey::Survey;
use ferry_tests::debian::{self, LVM_ROOT_UUID};
use ferry_tests::vm::{Manager, Qemu, captured, ramdisk};
use serde_json::Value;

/// The machine: TCG, 2 CPUs, the system disk (changes thrown away), the source's NICs
/// and the agent CD.
fn machine(system: &Path, console: &Path, cd: &Path) -> Vec<String> {
    let mut a = ferry_tests::vm::machine_args(2, console);
    a.push("-drive".into());
    a.push(format!(
        "file={},format=raw,snapshot=on,if=none,id=d0",
        system.display()
    ));
    a.push("-device".into());
    a.push("virtio-blk-pci,drive=d0,serial=SRC-LVM".into());
    a.extend(debian::nic_args());
    a.push("-cdrom".into());
    a.push(cd.to_string_lossy().into());
    a
}

/// The highest counter value the guest's writer has shown on the console.
fn last_tick(vm: &Qemu) -> u64 {
    vm.console()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("FERRY-TICK ")?.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn root_on_lvm(s: &Survey) -> bool {
    s.os.storage
        .filesystems
        .iter()
        .any(|f| f.mountpoints.iter().any(|m| m == "/") && f.uuid.as_deref() == Some(LVM_ROOT_UUID))
        && s.os
            .storage
            .lvm
            .lvs
            .iter()
            .any(|l| l.vg == "sys" && l.name == "root")
}

#[tokio::test]
async fn a_root_on_lvm_is_captured_live_from_one_lvm_snapshot_at_one_point_in_time() -> Result<()> {
    let Some(_) = ramdisk() else { return Ok(()) };
    let system = debian::lvm_root_disk().await?;
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let cd = m.agent_cd(work.path())?;
    let console = work.path().join("console.log");
    let mut vm = Qemu::start(
        work.path(),
        &console,
        &machine(&system, &console, &cd),
        None,
    )?;
    let (id, survey) = m
        .wait_survey(&mut vm, "installed", Duration::from_secs(420), root_on_lvm)
        .await?;
    anyhow::ensure!(
        survey.validate().is_empty(),
        "inconsistent survey: {:?}",
        survey.validate()
    );
    // The writer has been running for a while.
    vm.wait_console("FERRY-TICK 50", Duration::from_secs(120))
        .await?;

    eprintln!("{:.0} s: the agent reported, the writer runs", vm.age());
    let before = last_tick(&vm);
    let out = m.ferry(&[
        "capture",
        &id,
        "--image",
        "lvroot",
        "--json",
        "--timeout",
        "1500",
    ])?;
    let after = last_tick(&vm);
    eprintln!("{:.0} s: captured", vm.age());
    let v: Value = serde_json::from_str(&out).context("capture --json")?;
    let root = captured(&v, "/")?;
    anyhow::ensure!(root["consistency"] == "lvm-snapshot", "/: {root:#}");
    anyhow::ensure!(root["files"].as_u64() > Some(10_000), "/: {root:#}");
    let boot = captured(&v, "/boot")?;
    anyhow::ensure!(boot["consistency"] == "live", "/boot: {boot:#}");
    anyhow::ensure!(
        v["filesystems"].as_array().map(Vec::len) == Some(2),
        "only / and /boot are local persistent filesystems: {v:#}"
    );

    m.ensure_no_snapshots(&id)?;
    // The guest is done with; the host's two cores go to the restore.
    drop(vm);

    let to = work.path().join("restored-root");
    let restore = std::time::Instant::now();
    let report = m.restore("lvroot", "/", &to).await?;
    anyhow::ensure!(report.error_count == 0, "{report:?}");
    eprintln!(
        "restored on the host in {:.0} s",
        restore.elapsed().as_secs_f64()
    );
    let counter = |name: &str| -> Result<u64> {
        let p = to.join(name).join("n");
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?}", p.display()))
    };
    let (first, last) = (counter("aaa-ticker")?, counter("zzz-ticker")?);
    // One point in time: the writer renames zzz first, so zzz is aaa or aaa + 1 ...
    anyhow::ensure!(
        last == first || last == first + 1,
        "the restored root is not one point in time: /aaa-ticker/n = {first}, /zzz-ticker/n = {last}"
    );
    // ... and that point lies within the capture (the console shows every 25th value).
    anyhow::ensure!(
        before <= first && first <= after + 25,
        "the snapshot's moment ({first}) is not within the capture (ticks {before}..{after})"
    );
    let fstab = std::fs::read_to_string(to.join("etc/fstab"))?;
    anyhow::ensure!(fstab.contains("/dev/mapper/sys-root /"), "{fstab}");
    anyhow::ensure!(
        std::fs::read_dir(to.join("boot"))?.next().is_none(),
        "/boot's files belong to the /boot filesystem, not to the root's"
    );
    let tree = debian::root_tree()?;
    for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr/share"] {
        let diffs: Vec<String> = ferry_tests::fidelity::compare(&tree.join(dir), &to.join(dir))?
            .into_iter()
            .filter(|d| !d.contains(": atime "))
            .collect();
        anyhow::ensure!(diffs.is_empty(), "restored /{dir} differs: {diffs:#?}");
    }
    Ok(())
}
