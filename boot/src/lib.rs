//! Boot-loader knowledge shared by the agent, the manager and xtask: the Ferry kernel
//! command line (`ferry.*` parameters), iPXE scripts, the ISO's GRUB config, and PXE
//! trees for an existing DHCP/TFTP setup. Plain std, so the static agent uses it too.

pub mod cmdline;
pub mod ipxe;
pub mod iso;
pub mod pxe;

/// The kernel and initrd file names Ferry uses everywhere.
pub const KERNEL: &str = "vmlinuz";
/// The compressed ramdisk's file name.
pub const INITRD: &str = "initrd.zst";
/// The ramdisk without the build kernel's modules and firmware: a server's own ramdisk
/// (`ferry boot-ramdisk`) is this with its own kernel's drivers added.
pub const INITRD_BASE: &str = "initrd-base.zst";
/// What a server needs to know to add its drivers to [`INITRD_BASE`] (the module lists
/// of the manifest it was built from), beside it.
pub const INITRD_BASE_INFO: &str = "initrd-base.json";

/// What every Ferry ramdisk boot passes the kernel: the serial console last (so
/// `/dev/console` is the serial port), and a reboot 30 s after a kernel panic.
pub const DEFAULT_APPEND: &str = "console=tty0 console=ttyS0,115200n8 panic=30";
