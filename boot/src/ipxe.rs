//! iPXE scripts. Relative file names resolve against the script's own URL, so one
//! script serves TFTP and HTTP alike.

use crate::{DEFAULT_APPEND, INITRD, KERNEL};

/// A script that boots the Ferry kernel and ramdisk found at `base` (a URL prefix
/// ending in `/`, or empty for "next to this script") with the given extra
/// parameters. `initrd=` on the kernel line is what UEFI iPXE needs to hand the
/// ramdisk over.
pub fn boot_script(base: &str, extra: &str) -> String {
    let extra = extra.trim();
    let sep = if extra.is_empty() { "" } else { " " };
    format!(
        "#!ipxe\n\
         echo Ferry: loading the ramdisk from {where_}\n\
         kernel {base}{KERNEL} initrd={INITRD} {DEFAULT_APPEND}{sep}{extra} || goto failed\n\
         initrd {base}{INITRD} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo Ferry: boot failed; retrying in 10 s\n\
         sleep 10\n\
         reboot\n",
        where_ = if base.is_empty() {
            "the boot server"
        } else {
            base
        },
    )
}

/// A script that hands over to the per-machine script named by the NIC's MAC address
/// (`<base>host/<mac with hyphens>.ipxe`), so each machine gets its own command line.
pub fn chain_script(base: &str) -> String {
    format!("#!ipxe\nchain {base}host/${{net0/mac:hexhyp}}.ipxe || chain {base}default.ipxe\n")
}

/// The GRUB config of the Ferry ISO: serial and screen console, no menu wait.
pub fn grub_cfg(extra: &str) -> String {
    let extra = extra.trim();
    let sep = if extra.is_empty() { "" } else { " " };
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set timeout=0\n\
         menuentry \"Ferry ramdisk\" {{\n\
         \x20   linux /boot/{KERNEL} {DEFAULT_APPEND}{sep}{extra}\n\
         \x20   initrd /boot/{INITRD}\n\
         }}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_the_files_and_carry_the_parameters() {
        let s = boot_script(
            "http://10.0.2.2:8081/boot/",
            "ferry.iface=52:54:00:12:34:56",
        );
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.0.2.2:8081/boot/vmlinuz initrd=initrd.zst console="));
        assert!(s.contains("ferry.iface=52:54:00:12:34:56 || goto failed"));
        assert!(s.contains("initrd http://10.0.2.2:8081/boot/initrd.zst"));
        assert!(chain_script("").contains("chain host/${net0/mac:hexhyp}.ipxe"));
        assert!(grub_cfg("ferry.debug").contains(
            "linux /boot/vmlinuz console=tty0 console=ttyS0,115200n8 panic=30 ferry.debug"
        ));
    }
}
