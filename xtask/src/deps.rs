//! Installs what the test suites need, idempotently and quietly: Debian packages for
//! Apache mod_dav, nftables and network namespaces, QEMU and what the ramdisk is built
//! from, and moto as the independent S3 server.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::sh;

/// Debian packages the suites use, with a program that shows each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("apache2", "/usr/sbin/apache2"),
    ("nftables", "/usr/sbin/nft"),
    ("iproute2", "/usr/sbin/ip"),
    ("openssl", "/usr/bin/openssl"),
    ("python3-venv", ""),
    // The ramdisk, its boot media and the QEMU suites.
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("linux-image-amd64", ""),
    ("ipxe-qemu", "/usr/lib/ipxe/qemu/pxe-virtio.rom"),
    ("ipxe", "/usr/lib/ipxe/undionly.kpxe"),
    ("ovmf", "/usr/share/ovmf/OVMF.fd"),
    ("busybox-static", "/bin/busybox"),
    ("xorriso", "/usr/bin/xorriso"),
    ("mtools", "/usr/bin/mcopy"),
    ("grub-common", "/usr/bin/grub-mkrescue"),
    ("grub-pc-bin", "/usr/lib/grub/i386-pc/cdboot.img"),
    ("grub-efi-amd64-bin", "/usr/lib/grub/x86_64-efi/linux.mod"),
    ("grub2-common", "/usr/sbin/grub-install"),
    ("lvm2", "/usr/sbin/lvm"),
    ("mdadm", "/usr/sbin/mdadm"),
    ("xfsprogs", "/usr/sbin/mkfs.xfs"),
    ("dosfstools", "/usr/sbin/mkfs.vfat"),
    ("e2fsprogs", "/usr/sbin/mke2fs"),
    ("gdisk", "/usr/sbin/sgdisk"),
    ("fdisk", "/usr/sbin/sfdisk"),
    ("kexec-tools", "/usr/sbin/kexec"),
    ("btrfs-progs", "/usr/sbin/mkfs.btrfs"),
    ("efibootmgr", "/usr/bin/efibootmgr"),
    ("musl-tools", "/usr/bin/musl-gcc"),
    ("cpio", "/usr/bin/cpio"),
    ("zstd", "/usr/bin/zstd"),
    ("ca-certificates", "/etc/ssl/certs/ca-certificates.crt"),
    ("pci.ids", "/usr/share/misc/pci.ids"),
    ("iproute2", "/usr/bin/ip"),
    ("debootstrap", "/usr/sbin/debootstrap"),
    // The anchor of `cargo xtask bench survey`.
    ("lshw", "/usr/bin/lshw"),
    // Image fidelity checks and the library's interoperability with stock restic.
    ("attr", "/usr/bin/getfattr"),
    ("acl", "/usr/bin/getfacl"),
    ("libcap2-bin", "/usr/sbin/getcap"),
    ("restic", "/usr/bin/restic"),
];

/// Installed after the rest: installing qemu-system-x86 can remove a newer qemu-utils.
const AFTER: &[(&str, &str)] = &[("qemu-utils", "/usr/bin/qemu-img")];

/// Paths of installed tools, passed to the tests as environment variables.
pub struct Tools {
    /// The `moto_server` program.
    pub moto_server: PathBuf,
}

fn missing_packages(list: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    list.iter()
        .filter(|(pkg, probe)| {
            if probe.is_empty() {
                !Command::new("dpkg")
                    .args(["-s", pkg])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            } else {
                !std::path::Path::new(probe).exists()
            }
        })
        .map(|(pkg, _)| *pkg)
        .collect()
}

/// Installs whatever is missing and returns where the tools are.
pub fn ensure() -> Result<Tools> {
    let mut updated = false;
    for list in [PACKAGES, AFTER] {
        let missing = missing_packages(list);
        if missing.is_empty() {
            continue;
        }
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if !root {
            anyhow::bail!(
                "Debian packages {} are missing and installing them needs root: run \
                 `sudo apt-get update && sudo apt-get install -y --no-install-recommends {}` \
                 (or this command as root)",
                missing.join(" "),
                missing.join(" ")
            );
        }
        eprintln!("xtask: installing Debian packages {}", missing.join(" "));
        if !updated {
            sh::quiet(Command::new("apt-get").args(["update", "-qq"]))?;
            updated = true;
        }
        sh::quiet(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    let moto_server = ensure_moto()?;
    Ok(Tools { moto_server })
}

/// moto in its own venv under `~/.cache/ferry`, so no system Python is touched and a
/// fresh clone reuses it.
fn ensure_moto() -> Result<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| sh::root().join("target"));
    let venv = cache.join("ferry/moto-venv");
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    eprintln!("xtask: installing moto[server] into {}", venv.display());
    sh::quiet(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("making a Python venv for moto (needs python3-venv)")?;
    sh::quiet(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        "moto[server]==5.*",
    ]))?;
    Ok(server)
}
