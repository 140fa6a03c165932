//! The built ramdisk, unpacked on the host with GNU cpio: its format is what the kernel
//! and standard tools read, and every tool in it runs from it (its libraries came along).

use std::process::Command;

use anyhow::Result;
use ferry_tests::vm::ramdisk;

#[test]
fn gnu_cpio_unpacks_it_and_every_tool_runs_inside() -> Result<()> {
    let Some(r) = ramdisk() else { return Ok(()) };
    let root = tempfile::tempdir()?;
    let unpack = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc {} | cpio -idm --quiet --no-absolute-filenames",
            r.join("initrd.zst").display()
        ))
        .current_dir(root.path())
        .output()?;
    assert!(
        unpack.status.success(),
        "{}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    let root = root.path();
    assert!(std::fs::metadata(root.join("init"))?.len() > 1_000_000);
    assert!(root.join("usr/lib/modules").is_dir());
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("etc/ferry/ramdisk.json"))?)?;
    assert!(
        info["modules"].as_array().is_some_and(|m| m.len() > 300),
        "all drivers"
    );
    for (tool, args) in [
        ("lvm", &["version"][..]),
        ("mdadm", &["--version"]),
        ("mkfs.xfs", &["-V"]),
        ("mke2fs", &["-V"]),
        ("sgdisk", &["--version"]),
        ("sfdisk", &["--version"]),
        ("blkid", &["-V"]),
        ("lsblk", &["--version"]),
        ("wipefs", &["--version"]),
        ("kexec", &["--version"]),
        ("ip", &["-V"]),
        ("mkfs.vfat", &["--help"]),
        ("busybox", &["true"]),
        ("ferry-agent", &["--version"]),
    ] {
        let out = Command::new("chroot")
            .arg(root)
            .arg(format!("/usr/bin/{tool}"))
            .args(args)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("error while loading shared libraries") && !text.contains("not found"),
            "{tool}: {text}"
        );
        // mkfs.vfat --help exits 1 by design; the rest must succeed.
        assert!(
            out.status.success() || tool == "mkfs.vfat",
            "{tool} {args:?}: {text}"
        );
    }
    assert!(
        root.join("usr/share/misc/pci.ids").is_file(),
        "PCI names for the survey"
    );
    // With no /proc or /sys (a bare chroot) the survey still completes, consistent,
    // and names what it could not learn.
    let out = Command::new("chroot")
        .arg(root)
        .args(["/usr/bin/ferry-agent", "survey", "--json"])
        .output()?;
    assert!(
        out.status.success(),
        "survey in the ramdisk tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let survey: ferry_model::survey::Survey = serde_json::from_slice(&out.stdout)?;
    assert_eq!(survey.os.init, "ferry");
    assert!(
        survey.gaps.iter().any(|g| g.what == "cpu"),
        "{:?}",
        survey.gaps
    );
    Ok(())
}
