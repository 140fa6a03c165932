//! Deploys onto a ramdisk VM through the mailbox, with the ramdisk's real tools:
//! - a target too small for the image is refused by `ferry deploy` before anything is
//!   sent;
//! - a deliberately broken image (a root without LVM's tools, which the target's
//!   RAID1 + LVM layout needs at boot) fails at the drivers step after the layout
//!   (wipe, GPT on two disks, RAID1, LVM, ext4, mount, restore, configure) was made
//!   for real; the error names the step and the cause, and both disks are left
//!   without a partition table, RAID or LVM signature.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_image::{CaptureRequest, FsSource};
use ferry_model::deploy::DeployPlan;
use ferry_model::deploy::examples::fs;
use ferry_model::survey::{Filesystem, Survey};
use ferry_tests::vm::{MAC, Manager, Qemu, machine_args, qcow2, ramdisk, ramdisk_boot, user_nic};

const GIB: u64 = 1 << 30;

/// A small root: what a configure step reads and writes, but no kernel and no LVM.
fn broken_root(dir: &Path) -> Result<()> {
    for (path, text) in [
        ("etc/fstab", "UUID=0000 / ext4 errors=remount-ro 0 1\n"),
        ("etc/hostname", "broken\n"),
        ("etc/hosts", "127.0.0.1 localhost\n127.0.1.1 broken\n"),
        ("etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
        (
            "etc/network/interfaces",
            "auto lo\niface lo inet loopback\n",
        ),
        ("srv/www/index.html", "ferry deploy test\n"),
    ] {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(p, text)?;
    }
    Ok(())
}

/// Captures `tree` as image `image` into the manager's library, with `survey` as the
/// source's.
async fn capture(m: &Manager, image: &str, tree: &Path, survey: Survey) -> Result<()> {
    let config = ferry_manager::config::ManagerConfig::load(&m.config)?;
    let req = CaptureRequest {
        image: image.into(),
        filesystems: vec![FsSource {
            path: "/".into(),
            read_from: tree.to_path_buf(),
            fstype: Some("ext4".into()),
            ..Default::default()
        }],
        hostname: "broken".into(),
        survey: Some(survey),
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || -> Result<()> {
        let lib = ferry_manager::images::open(&config)?;
        if !lib.exists()? {
            lib.init()?;
        }
        ferry_image::capture(&lib, &req, &ferry_image::Meter::silent())?;
        Ok(())
    })
    .await?
}

/// A source survey whose root used `used` bytes on a 20 GiB disk.
fn survey(used: u64) -> Survey {
    let mut s = Survey {
        hostname: "broken".into(),
        ..Default::default()
    };
    s.os.storage.filesystems.push(Filesystem {
        device: "/dev/vda1".into(),
        fstype: "ext4".into(),
        size_bytes: 20 * GIB,
        used_bytes: Some(used),
        mountpoints: vec!["/".into()],
        ..Default::default()
    });
    s
}

/// RAID1 over both 1 GiB disks, LVM on the array, an ext4 root taking it all.
fn mirrored_plan() -> DeployPlan {
    let mut p = ferry_model::deploy::examples::plan();
    p.image = "broken".into();
    p.hostname = "deployed".into();
    p.network.interfaces[0].kind = ferry_model::deploy::IfaceKind::Ethernet { mac: MAC.into() };
    let (disks, md) = ferry_model::deploy::examples::mirror(&["vda", "vdb"], GIB);
    p.storage.disks = disks;
    p.storage.md = vec![md];
    p.storage.vgs[0].pvs = vec!["md0".into()];
    p.storage.vgs[0].lvs.retain(|l| l.name == "root");
    p.storage.filesystems = vec![fs("sys/root", "ext4", Some("/"), Some("/"))];
    p.boot.disks = vec!["vda".into(), "vdb".into()];
    p
}

#[tokio::test]
async fn a_failed_deploy_names_its_step_and_leaves_wiped_disks() -> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let boot = work.path().join("boot");
    m.boot_files(&boot, "panic=-1")?;
    let console = work.path().join("console.log");
    let mut args = machine_args(1, &console);
    for d in ["vda", "vdb"] {
        let disk = work.path().join(format!("{d}.qcow2"));
        qcow2(&disk, "1G")?;
        args.extend([
            "-drive".to_string(),
            format!("file={},if=virtio,format=qcow2", disk.display()),
        ]);
    }
    args.extend(ramdisk_boot(&boot));
    args.extend(user_nic());
    let mut vm = Qemu::start(work.path(), &console, &args, None)?;
    let agent = m
        .wait_ramdisk_agent(&mut vm, Duration::from_secs(240))
        .await?;
    let id = agent["id"].as_str().unwrap_or_default().to_string();

    // An image whose root used 5 GiB does not fit 1 GiB disks: refused by the
    // manager, which sends nothing.
    let tree = work.path().join("tree");
    broken_root(&tree)?;
    capture(&m, "big", &tree, survey(5 * GIB)).await?;
    let err = m
        .ferry(&["deploy", "big", "--to", &id, "--no-reboot"])
        .expect_err("refused");
    let text = format!("{err:#}");
    assert!(text.contains("the plan cannot be carried out"), "{text}");
    assert!(text.contains("does not fit: / used 5120 MiB"), "{text}");

    // The broken image on RAID1 + LVM: every storage step runs, the drivers step
    // finds no LVM tools in the restored system.
    capture(&m, "broken", &tree, survey(1 << 20)).await?;
    let plan = work.path().join("plan.yaml");
    std::fs::write(&plan, serde_json::to_string(&mirrored_plan())?)?;
    let err = m
        .ferry(&[
            "deploy",
            "broken",
            "--to",
            &id,
            "--plan",
            &plan.to_string_lossy(),
            "--no-reboot",
            "--timeout",
            "900",
        ])
        .expect_err("the deploy fails");
    let text = format!("{err:#}");
    eprintln!("the deploy failed as it should: {text}");
    assert!(
        text.contains("step drivers") && text.contains("the migrated system has no lvm"),
        "{text}\n{}",
        vm.tail()
    );
    assert!(
        text.contains("the new partition tables were wiped"),
        "{text}"
    );

    // Nothing of the new layout is left to boot from.
    let survey: Survey = serde_json::from_str(&m.ferry(&["survey", &id, "--json"])?)?;
    let storage = &survey.os.storage;
    assert!(
        storage
            .partition_tables
            .iter()
            .all(|t| t.partitions.is_empty()),
        "{:#?}",
        storage.partition_tables
    );
    assert!(storage.md_arrays.is_empty(), "{:#?}", storage.md_arrays);
    assert!(storage.lvm.vgs.is_empty(), "{:#?}", storage.lvm.vgs);
    let out = m.ferry(&["poweroff", &id, "--timeout", "120"])?;
    assert!(out.contains("machine powering off"), "{out}");
    vm.wait_exit(Duration::from_secs(120)).await?;
    Ok(())
}
