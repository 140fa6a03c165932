//! `grub-once`: a GRUB menu entry for the ramdisk, booted on the next boot only.
//!
//! Debian's and Ubuntu's `grub.cfg` (its `00_header`) boots `next_entry` from the
//! environment block once and clears it with `save_env` before booting it; `41_custom`
//! sources `custom.cfg` from the same folder at boot time. So an entry in `custom.cfg`
//! and `next_entry` in `grubenv` boot the ramdisk once without touching the default
//! entry or running `update-grub`. GRUB writes its environment block only on plain
//! filesystems it can write in place (ext2/3/4), never through LVM or RAID: elsewhere
//! `next_entry` would never be cleared and every boot would enter the ramdisk, so
//! grub-once is refused there.

use anyhow::{Result, bail, ensure};

/// The entry's id in `custom.cfg`.
pub const ENTRY_ID: &str = "ferry-ramdisk";
/// Marks Ferry's part of `custom.cfg`, so it is replaced and removed without touching
/// the rest.
const BEGIN: &str = "### BEGIN ferry-ramdisk (written by ferry-agent; removed by it)";
const END: &str = "### END ferry-ramdisk";
/// The size of GRUB's environment block.
const ENV_BLOCK: usize = 1024;
const ENV_HEADER: &str = "# GRUB Environment Block\n";

/// Why `grub.cfg` cannot boot an entry once, or `None` when it can.
pub fn config_problem(grub_cfg: &str) -> Option<String> {
    if !grub_cfg.contains("next_entry") || !grub_cfg.contains("save_env next_entry") {
        return Some(
            "grub.cfg does not boot next_entry once (no `save_env next_entry`); it was not made by grub-mkconfig".into(),
        );
    }
    if !grub_cfg.contains("custom.cfg") {
        return Some(
            "grub.cfg does not source custom.cfg (its 41_custom part is missing); run update-grub with /etc/grub.d/41_custom present".into(),
        );
    }
    None
}

/// Why GRUB cannot clear `next_entry` on the filesystem holding its folder, or `None`
/// when it can: `fstype` of the filesystem, `device` its block device.
pub fn env_problem(fstype: &str, device: &str) -> Option<String> {
    let dev = device.rsplit('/').next().unwrap_or(device);
    if dev.starts_with("dm-") || dev.starts_with("md") || device.starts_with("/dev/mapper/") {
        return Some(format!(
            "GRUB's folder is on {device} (LVM, RAID or device-mapper), where GRUB cannot write its environment block at boot, so a once-only entry would stay"
        ));
    }
    if !matches!(fstype, "ext2" | "ext3" | "ext4") {
        return Some(format!(
            "GRUB's folder is on {fstype}, where GRUB cannot write its environment block at boot, so a once-only entry would stay"
        ));
    }
    None
}

/// The menu entry: the server's own kernel and the ramdisk, found on the filesystem
/// with `uuid`; `prefix` is the path of `/boot` inside that filesystem (`/boot` when
/// it is the root filesystem, empty when `/boot` is one of its own).
pub fn entry(uuid: &str, prefix: &str, kernel: &str, ramdisk: &str, cmdline: &str) -> String {
    format!(
        "{BEGIN}\n\
         menuentry 'Ferry ramdisk (this boot only)' --id {ENTRY_ID} {{\n\
         \tinsmod part_gpt\n\
         \tinsmod part_msdos\n\
         \tinsmod ext2\n\
         \tsearch --no-floppy --fs-uuid --set=root {uuid}\n\
         \tlinux {prefix}/{kernel} {cmdline}\n\
         \tinitrd {prefix}/{ramdisk}\n\
         }}\n\
         {END}\n"
    )
}

/// `custom.cfg` with Ferry's part replaced by `part` (or removed when `None`), the
/// rest kept as it was.
pub fn with_entry(custom: &str, part: Option<&str>) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in custom.lines() {
        if line == BEGIN {
            inside = true;
            continue;
        }
        if inside {
            inside = line != END;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(part) = part {
        out.push_str(part);
    }
    out
}

/// The variables of an environment block (`grubenv`), in order.
pub fn env_vars(block: &[u8]) -> Result<Vec<(String, String)>> {
    let text = std::str::from_utf8(block)
        .map_err(|_| anyhow::anyhow!("grubenv is not text; it is not a GRUB environment block"))?;
    ensure!(
        text.starts_with(ENV_HEADER),
        "grubenv does not start with {:?}; it is not a GRUB environment block",
        ENV_HEADER.trim()
    );
    Ok(text[ENV_HEADER.len()..]
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// An environment block with `key` set to `value` (or removed when `None`), padded
/// with `#` to its size as GRUB requires (1024 bytes, or the old block's size).
pub fn env_set(block: Option<&[u8]>, key: &str, value: Option<&str>) -> Result<Vec<u8>> {
    ensure!(
        !key.is_empty() && !key.contains(['=', '\n']),
        "bad GRUB variable name {key:?}"
    );
    let mut vars = match block {
        Some(b) => env_vars(b)?,
        None => Vec::new(),
    };
    vars.retain(|(k, _)| k != key);
    if let Some(v) = value {
        ensure!(!v.contains('\n'), "bad value for GRUB variable {key}");
        vars.push((key.to_string(), v.to_string()));
    }
    let mut text = String::from(ENV_HEADER);
    for (k, v) in &vars {
        text.push_str(&format!("{k}={v}\n"));
    }
    let size = block.map_or(ENV_BLOCK, |b| b.len().max(ENV_BLOCK));
    if text.len() > size {
        bail!(
            "the GRUB environment block is full ({} of {size} bytes); remove variables with grub-editenv",
            text.len()
        );
    }
    let mut out = text.into_bytes();
    out.resize(size, b'#');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of Debian 12's grub.cfg that matter here (grub-mkconfig 2.06).
    const DEBIAN_CFG: &str = r#"
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
### BEGIN /etc/grub.d/41_custom ###
if [ -f  ${config_directory}/custom.cfg ]; then
  source ${config_directory}/custom.cfg
elif [ -z "${config_directory}" -a -f  $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
### END /etc/grub.d/41_custom ###
"#;

    #[test]
    fn a_grub_mkconfig_config_boots_once_and_others_are_named() {
        assert_eq!(config_problem(DEBIAN_CFG), None);
        let hand = "menuentry 'Linux' { linux /vmlinuz root=/dev/vda1 }\n";
        assert!(
            config_problem(hand)
                .unwrap()
                .contains("save_env next_entry")
        );
        let no_custom = DEBIAN_CFG.replace("custom.cfg", "x");
        assert!(config_problem(&no_custom).unwrap().contains("41_custom"));
    }

    #[test]
    fn the_environment_must_be_writable_by_grub() {
        assert_eq!(env_problem("ext4", "/dev/vda1"), None);
        assert!(env_problem("xfs", "/dev/vda1").unwrap().contains("on xfs"));
        assert!(
            env_problem("ext4", "/dev/mapper/vg0-root")
                .unwrap()
                .contains("LVM, RAID")
        );
        assert!(
            env_problem("ext4", "/dev/md0")
                .unwrap()
                .contains("LVM, RAID")
        );
    }

    #[test]
    fn the_environment_block_keeps_its_size_and_other_variables() {
        let first = env_set(None, "saved_entry", Some("0")).unwrap();
        assert_eq!(first.len(), 1024);
        let set = env_set(Some(&first), "next_entry", Some(ENTRY_ID)).unwrap();
        assert_eq!(set.len(), 1024);
        assert_eq!(
            env_vars(&set).unwrap(),
            [
                ("saved_entry".to_string(), "0".to_string()),
                ("next_entry".to_string(), ENTRY_ID.to_string())
            ]
        );
        let cleared = env_set(Some(&set), "next_entry", None).unwrap();
        assert_eq!(env_vars(&cleared).unwrap().len(), 1);
        assert!(cleared.ends_with(b"###"));
        let err = env_vars(b"garbage").unwrap_err().to_string();
        assert!(err.contains("not a GRUB environment block"), "{err}");
        let big = "x".repeat(1100);
        let err = env_set(None, "a", Some(&big)).unwrap_err().to_string();
        assert!(err.contains("full"), "{err}");
    }

    #[test]
    fn the_entry_replaces_only_its_own_part_of_custom_cfg() {
        let part = entry(
            "0d5c-uuid",
            "/boot",
            "vmlinuz-6.1.0-41-amd64",
            "ferry-ramdisk.img",
            "console=ttyS0 panic=10",
        );
        assert!(part.contains("search --no-floppy --fs-uuid --set=root 0d5c-uuid"));
        assert!(part.contains("linux /boot/vmlinuz-6.1.0-41-amd64 console=ttyS0 panic=10"));
        assert!(part.contains("initrd /boot/ferry-ramdisk.img"));
        assert!(part.contains(&format!("--id {ENTRY_ID}")));
        let mine = "menuentry 'Memtest' { linux16 /memtest }\n";
        let with = with_entry(mine, Some(&part));
        assert!(with.starts_with(mine) && with.ends_with(&part));
        // Written twice, it is there once; removed, the user's part stays.
        let again = with_entry(&with, Some(&part));
        let id = format!("--id {ENTRY_ID}");
        assert_eq!(again.matches(&id).count(), 1);
        assert_eq!(again.matches(BEGIN).count(), 1);
        assert_eq!(with_entry(&again, None), mine);
    }
}
