//! `ferry-agent survey --json` on the build machine: it completes, its JSON reads back
//! as the model's survey, the survey is consistent, and what it could not learn here is
//! named rather than fatal.

use std::process::Command;

use ferry_model::survey::Survey;
use ferry_tests::procs::bin;

#[test]
fn the_build_machine_surveys_itself() {
    let out = Command::new(bin("ferry-agent"))
        .args(["survey", "--json"])
        .output()
        .expect("running ferry-agent survey");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ferry-agent survey failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Survey = serde_json::from_str(&text).expect("the survey JSON reads back");
    assert_eq!(s.validate(), Vec::<String>::new());
    assert!(!s.hostname.is_empty() && !s.kernel.is_empty());
    assert!(s.hardware.cpu.threads >= 1 && !s.hardware.cpu.model.is_empty());
    assert!(s.memory_bytes > 0);
    assert!(!s.nics.is_empty(), "{s:#?}");
    // The build machine is Debian: os-release and the dpkg database are there.
    assert_eq!(s.os.distro.id, "debian");
    assert_eq!(s.apps.package_manager.as_deref(), Some("dpkg"));
    assert!(s.apps.packages.iter().any(|p| p.name == "bash"));
    assert!(s.os.network.interfaces.iter().any(|i| i.kind == "loopback"));
    for g in &s.gaps {
        assert!(!g.what.is_empty() && !g.why.is_empty(), "{g:?}");
    }
}

/// A loop disk with one partition (partx adds it: the host kernel reads no tables),
/// taken apart again when dropped.
struct HeldDisk {
    image: std::path::PathBuf,
    device: String,
    mnt: std::path::PathBuf,
}

impl Drop for HeldDisk {
    fn drop(&mut self) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd.stderr(std::process::Stdio::null()).status();
        };
        quiet(Command::new("umount").arg(&self.mnt));
        quiet(Command::new("partx").args(["-d", &self.device]));
        quiet(Command::new("losetup").args(["-d", &self.device]));
        let _ = std::fs::remove_file(&self.image);
    }
}

/// What holds a disk, on real devices: a mounted partition is named in the survey's
/// words and a deploy onto the disk is refused before anything is wiped; a filesystem
/// unmounted lazily while a file on it is open still holds the disk (the case of a
/// ramdisk entered from the server's own root) and is refused too; once let go of,
/// the disk is free.
#[test]
fn a_held_disk_is_named_and_a_deploy_refuses_it() {
    use ferry_agent::deploy::storage::check_free;
    use ferry_agent::survey::{Host, holds};
    use ferry_model::deploy::{DiskLayout, StorageLayout, TableKind};
    use ferry_tests::fidelity::{can_run, sh};
    if let Some(what) = can_run() {
        ferry_tests::util::missing(&what);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(64 << 20))
        .expect("image");
    sh(Command::new("sgdisk").args(["-Z", "-n1:0:0"]).arg(&image)).expect("sgdisk");
    let device = sh(Command::new("losetup").args(["-f", "--show"]).arg(&image))
        .expect("losetup")
        .trim()
        .to_string();
    let disk = HeldDisk {
        image,
        mnt: dir.path().join("mnt"),
        device: device.clone(),
    };
    sh(Command::new("partx").args(["-a", &device])).expect("partx");
    let part = format!("{device}p1");
    sh(Command::new("mkfs.ext4").args(["-q", &part])).expect("mkfs");
    std::fs::create_dir_all(&disk.mnt).expect("mnt");
    sh(Command::new("mount").arg(&part).arg(&disk.mnt)).expect("mount");

    let name = device.trim_start_matches("/dev/").to_string();
    let host = Host::live();
    let layout = StorageLayout {
        disks: vec![DiskLayout {
            disk: name.clone(),
            size_bytes: 64 << 20,
            id: None,
            table: TableKind::Gpt,
            partitions: vec![],
        }],
        ..Default::default()
    };
    let held = holds::holds(&host, &holds::Tables::read(&host), &name);
    assert_eq!(
        held.describe(),
        [format!("{name}p1 is mounted at {}", disk.mnt.display())]
    );
    let err = format!("{:#}", check_free(&host, &layout).expect_err("mounted"));
    assert!(
        err.contains(&format!(
            "disk {name}: this system still uses it — {name}p1 is mounted at"
        )),
        "{err}"
    );

    let open = std::fs::File::create(disk.mnt.join("open-file")).expect("a file on it");
    sh(Command::new("umount").arg("-l").arg(&disk.mnt)).expect("umount -l");
    let held = holds::holds(&host, &holds::Tables::read(&host), &name);
    assert!(held.uses.is_empty() && held.hidden, "{held:?}");
    let err = format!("{:#}", check_free(&host, &layout).expect_err("held"));
    assert!(err.contains("unmounted lazily"), "{err}");

    drop(open);
    let held = holds::holds(&host, &holds::Tables::read(&host), &name);
    assert!(held.free(), "{held:?}");
    check_free(&host, &layout).expect("free");
    drop(disk);
}
