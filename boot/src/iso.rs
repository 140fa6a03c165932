//! The Ferry ISO: a hybrid BIOS + UEFI image made by `grub-mkrescue`, which boots the
//! ramdisk from CD, DVD or a USB stick with the same GRUB config for both firmwares.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use crate::{INITRD, KERNEL, ipxe};

/// Writes `out` from a kernel and a ramdisk. Needs grub-mkrescue, xorriso, mtools and
/// GRUB's i386-pc and x86_64-efi modules (Debian: grub-common, grub-pc-bin,
/// grub-efi-amd64-bin, xorriso, mtools).
pub fn make_iso(out: &Path, kernel: &Path, initrd: &Path, extra: &str) -> io::Result<()> {
    let stage = tempdir_near(out)?;
    let boot = stage.join("boot");
    fs::create_dir_all(boot.join("grub"))?;
    for (src, name) in [(kernel, KERNEL), (initrd, INITRD)] {
        fs::copy(src, boot.join(name)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("copying {} for the ISO: {e}", src.display()),
            )
        })?;
    }
    fs::write(boot.join("grub/grub.cfg"), ipxe::grub_cfg(extra))?;
    let result = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(out)
        .arg(&stage)
        .arg("--")
        .args(["-volid", "FERRY"])
        .output();
    let _ = fs::remove_dir_all(&stage);
    let output = result.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("running grub-mkrescue: {e}; install grub-common, grub-pc-bin, grub-efi-amd64-bin, xorriso and mtools"),
        )
    })?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "grub-mkrescue failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

fn tempdir_near(out: &Path) -> io::Result<std::path::PathBuf> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let dir = parent.join(format!(".ferry-iso-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}
