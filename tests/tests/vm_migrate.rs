//! Complete migrations that boot: the web server (a debootstrapped Debian 12 with an
//! ext4 root, an xfs `/var` holding nginx's page, static addressing) is captured live
//! through its agent, then deployed onto a PXE-booted target with other firmware,
//! other disks and another MAC. The target reboots from its own disk into the migrated
//! system, which reports how it came up on the console and serves the source's page
//! on its new NIC.
//! - BIOS source → UEFI target with a larger disk, by `ferry migrate`: a job that
//!   captures the source while the target PXE-boots, finds the target by its MAC and
//!   deploys the default plan;
//! - UEFI source → BIOS target with RAID1 over two disks + LVM (the plan made from
//!   the default one), where the source had one plain disk.

use anyhow::Result;
use ferry_model::deploy::examples::{fs, mirror};
use ferry_model::deploy::{DeployPlan, LvLayout, VgLayout};
use ferry_model::survey::BootMode;
use ferry_tests::vm::{Manager, ramdisk};
use ferry_tests::webmove::{
    self, Deployed, Firmware, Follow, Target, capture_source, check_migrated, deploy_target,
    migrate,
};

const GIB: u64 = 1 << 30;

/// The size in MiB the report gives the filesystem at `mount`.
fn size_mib(d: &Deployed, mount: &str) -> u64 {
    d.report("FERRY-DF")
        .iter()
        .find_map(|l| {
            let (m, size) = l.split_once(' ')?;
            (m == mount).then(|| size.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_bios_web_server_moves_onto_a_larger_uefi_machine_and_serves_its_page() -> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let m = webmove::manager(work.path())?;
    let target = Target::larger_uefi();
    let (d, job) = migrate(
        &m,
        work.path(),
        Firmware::Bios,
        &target,
        "web-bios",
        Follow::Json,
    )
    .await?;
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let matched = &job["steps"][1]["status"]["outcome"];
    assert_eq!(matched["result"], "matched", "{job:#}");
    let captured = &job["steps"][0]["status"]["outcome"];
    let paths: Vec<&str> = captured["filesystems"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["path"].as_str()).collect())
        .unwrap_or_default();
    assert!(paths.contains(&"/") && paths.contains(&"/var"), "{job:#}");
    check_migrated(&d, Firmware::Uefi, target.mac).await?;
    let mounts = d.report("FERRY-MOUNT");
    assert!(
        mounts.iter().any(|l| l.starts_with("/ ext4 /dev/vda")),
        "{mounts:?}"
    );
    assert!(
        mounts.iter().any(|l| l.starts_with("/var xfs /dev/vda")),
        "{mounts:?}"
    );
    // The root took the larger disk's room (the source's was 2 GiB).
    assert!(size_mib(&d, "/") > 3000, "{:?}", d.report("FERRY-DF"));
    Ok(())
}

/// RAID1 over `vda` and `vdb` (a BIOS boot partition on each), LVM on the array, the
/// root (ext4) and `/var` (xfs) as volumes; the rest of `default` kept.
fn mirrored(mut p: DeployPlan) -> DeployPlan {
    assert_eq!(p.boot.mode, BootMode::Bios);
    let uuid = |mount: &str| {
        p.storage
            .filesystems
            .iter()
            .find(|f| f.mount.as_deref() == Some(mount))
            .and_then(|f| f.uuid.clone())
    };
    let (root_uuid, var_uuid) = (uuid("/"), uuid("/var"));
    let (disks, md) = mirror(&["vda", "vdb"], 3 * GIB);
    p.storage.disks = disks;
    p.storage.md = vec![md];
    p.storage.vgs = vec![VgLayout {
        name: "vg0".into(),
        pvs: vec!["md0".into()],
        lvs: vec![
            LvLayout {
                name: "var".into(),
                size_bytes: Some(GIB),
            },
            LvLayout {
                name: "root".into(),
                size_bytes: None,
            },
        ],
    }];
    let mut root = fs("vg0/root", "ext4", Some("/"), Some("/"));
    root.uuid = root_uuid;
    let mut var = fs("vg0/var", "xfs", Some("/var"), Some("/var"));
    var.uuid = var_uuid;
    p.storage.filesystems = vec![root, var];
    p.boot.disks = vec!["vda".into(), "vdb".into()];
    p
}

#[tokio::test]
async fn a_uefi_web_server_moves_onto_raid1_and_lvm_on_a_bios_machine() -> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    capture_source(&m, work.path(), Firmware::Uefi, "web-uefi").await?;
    let target = Target {
        firmware: Firmware::Bios,
        disks: vec![3, 3],
        mac: "52:54:00:f0:00:22",
    };
    let d = deploy_target(&m, work.path(), &target, "web-uefi", mirrored).await?;
    check_migrated(&d, Firmware::Bios, target.mac).await?;
    let mounts = d.report("FERRY-MOUNT");
    assert!(
        mounts.contains(&"/ ext4 /dev/mapper/vg0-root".to_string()),
        "{mounts:?}"
    );
    assert!(
        mounts.contains(&"/var xfs /dev/mapper/vg0-var".to_string()),
        "{mounts:?}"
    );
    let md = d.report("FERRY-MD");
    assert!(
        md.iter()
            .any(|l| l.contains("active raid1") && l.contains("vda2") && l.contains("vdb2")),
        "{md:?}"
    );
    Ok(())
}
