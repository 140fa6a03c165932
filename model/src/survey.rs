//! What an agent reports about the machine it runs on: hardware, OS configuration and
//! applications. The survey is the input of every later decision (disks to lay out,
//! addresses to carry over, drivers to inject, services that must answer after a move).
//!
//! Every section is filled as far as the machine allows: a fact the agent could not
//! learn is left empty and named in [`Survey::gaps`], never an error. Sizes are bytes,
//! IDs are lowercase hex without `0x`, MACs are lowercase `aa:bb:cc:dd:ee:ff`.

use serde::{Deserialize, Serialize};

/// The machine, as one agent saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survey {
    /// The host name the kernel reports.
    pub hostname: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Number of logical CPUs.
    pub cpus: u32,
    /// Installed memory in bytes.
    pub memory_bytes: u64,
    /// Whole block devices (no partitions).
    pub disks: Vec<Disk>,
    /// Network interfaces with a hardware address.
    pub nics: Vec<Nic>,
    /// CPU, firmware, SMBIOS, virtualisation and PCI devices.
    #[serde(default)]
    pub hardware: Hardware,
    /// Distribution, boot, storage stack, network and authentication.
    #[serde(default)]
    pub os: Os,
    /// Services, packages, listening sockets and application configs.
    #[serde(default)]
    pub apps: Apps,
    /// What the survey could not learn, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<Gap>,
    /// How long the survey took, in milliseconds.
    #[serde(default)]
    pub took_ms: u64,
}

/// A fact the survey could not learn.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The fact, e.g. `lvm` or `packages`.
    pub what: String,
    /// Why, e.g. `lvm: not installed`.
    pub why: String,
}

/// A whole block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model string, when the device reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number, when the device reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Vendor string, when the device reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// World Wide Name, when the device reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Logical sector size in bytes.
    #[serde(default)]
    pub logical_sector: u32,
    /// Physical sector size in bytes.
    #[serde(default)]
    pub physical_sector: u32,
    /// Spinning media.
    #[serde(default)]
    pub rotational: bool,
    /// Removable media (USB sticks, card readers).
    #[serde(default)]
    pub removable: bool,
    /// How it is attached: `nvme`, `sata`, `sas`, `scsi`, `usb`, `virtio`, `mmc`, `xen`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// What held it when surveyed, in words: filesystems mounted from it, swap,
    /// devices stacked on it (LVM, RAID, crypt) that are active, an exclusive open
    /// nothing shows. Empty when free; a deploy refuses a disk its ramdisk still uses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_use: Vec<String>,
}

/// A network interface backed by hardware.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Hardware address in use.
    pub mac: String,
    /// Kernel driver bound to the device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Whether the interface is operationally up.
    pub up: bool,
    /// The burnt-in address, when it differs or the driver reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent_mac: Option<String>,
    /// PCI address of the device, e.g. `0000:00:03.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    /// Link speed in Mbit/s, when the link is up and the driver says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
    /// Carrier detected.
    #[serde(default)]
    pub link: bool,
}

/// CPU, firmware, SMBIOS, virtualisation and PCI devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// The processors.
    pub cpu: Cpu,
    /// Firmware kind and version.
    pub firmware: Firmware,
    /// SMBIOS system identity.
    pub system: SystemId,
    /// Hypervisor and cloud, when virtual.
    pub platform: Platform,
    /// Every PCI device.
    pub pci: Vec<PciDevice>,
}

/// The processors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// Vendor id, e.g. `GenuineIntel`.
    pub vendor: String,
    /// Model name.
    pub model: String,
    /// Physical packages.
    pub sockets: u32,
    /// Cores over all sockets.
    pub cores: u32,
    /// Hardware threads (logical CPUs).
    pub threads: u32,
    /// Hardware virtualisation (VMX/SVM) is offered to this system.
    pub virtualization: bool,
}

/// How the machine boots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    /// Not known.
    #[default]
    Unknown,
    /// Legacy BIOS (or UEFI's compatibility module).
    Bios,
    /// UEFI.
    Uefi,
}

/// Firmware kind and version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firmware {
    /// BIOS or UEFI, as this boot used it.
    pub mode: BootMode,
    /// Secure Boot state (UEFI only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Firmware vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Firmware version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Firmware release date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// SMBIOS system identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemId {
    /// System manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// Product version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Serial number (readable by root only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// System UUID (readable by root only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Chassis asset tag (clouds put their name here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<String>,
}

/// Hypervisor and cloud.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `kvm`, `qemu` (emulated), `xen`, `vmware`, `hyper-v`, `virtualbox`, `parallels`,
    /// `bhyve`; `None` on bare metal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// `ec2`, `gce`, `azure`, `openstack`, `digitalocean`, `hetzner`, `oracle`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud: Option<String>,
    /// The facts that led there, e.g. `cpuid: KVMKVMKVM`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
}

/// A PCI device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// Domain:bus:device.function.
    pub address: String,
    /// Vendor id.
    pub vendor_id: String,
    /// Device id.
    pub device_id: String,
    /// Subsystem vendor id.
    pub subsystem_vendor_id: String,
    /// Subsystem device id.
    pub subsystem_device_id: String,
    /// Class, subclass and programming interface, e.g. `020000`.
    pub class: String,
    /// Vendor name from pci.ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_name: Option<String>,
    /// Device name from pci.ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// Class name from pci.ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Bound kernel driver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The kernel's modalias, for driver matching on another kernel.
    pub modalias: String,
}

/// Distribution, boot, storage stack, network and authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// From os-release.
    pub distro: Distro,
    /// The kernel command line of this boot.
    pub cmdline: String,
    /// PID 1: `systemd`, `sysvinit`, `openrc`, `upstart`, `ferry` (the ramdisk), …
    pub init: String,
    /// Boot loader installed and in use, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_loader: Option<BootLoader>,
    /// Partitions, RAID, LVM, filesystems, fstab, crypttab, swap.
    pub storage: Storage,
    /// Interfaces, addresses, routes, DNS and what configures them.
    pub network: Network,
    /// Accounts and directory membership.
    pub auth: Auth,
}

/// From `/etc/os-release`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distro {
    /// `ID`, e.g. `debian`.
    pub id: String,
    /// `ID_LIKE` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub like: Vec<String>,
    /// `VERSION_ID`, e.g. `12`.
    pub version_id: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
}

/// A boot loader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootLoader {
    /// `grub`, `grub2`, `systemd-boot`, `extlinux`, …
    pub kind: String,
    /// Its configuration files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<String>,
    /// UEFI: the boot entry this boot came from (`BootCurrent`), e.g. `Boot0001`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi_current: Option<String>,
}

/// The storage stack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Storage {
    /// One per partitioned disk.
    pub partition_tables: Vec<PartitionTable>,
    /// Linux software RAID arrays.
    pub md_arrays: Vec<MdArray>,
    /// LVM physical volumes, volume groups and logical volumes.
    pub lvm: Lvm,
    /// Every block device holding a filesystem, mounted or not.
    pub filesystems: Vec<Filesystem>,
    /// `/etc/fstab`.
    pub fstab: Vec<FstabEntry>,
    /// `/etc/crypttab`.
    pub crypttab: Vec<CrypttabEntry>,
    /// Active swap areas.
    pub swap: Vec<Swap>,
}

/// A partition table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    /// The disk, e.g. `vda`.
    pub disk: String,
    /// `gpt` or `dos`.
    pub kind: String,
    /// Disk GUID (GPT) or disk identifier (MBR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The partitions, by number.
    pub partitions: Vec<Partition>,
}

/// A partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Kernel name, e.g. `vda1`.
    pub name: String,
    /// Partition number.
    pub number: u32,
    /// Offset from the start of the disk in bytes.
    pub start_bytes: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Type GUID (GPT) or type byte such as `0x83` (MBR).
    pub type_id: String,
    /// GPT partition name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Partition UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// GPT attribute bits or MBR boot flag, as the kernel reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
}

/// A Linux software RAID array.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdArray {
    /// Kernel name, e.g. `md0`.
    pub device: String,
    /// Array name from its superblock, e.g. `host:0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `raid0`, `raid1`, `raid5`, …
    pub level: String,
    /// Array UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Superblock format, e.g. `1.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    /// Member devices (kernel names).
    pub members: Vec<String>,
    /// Number of members the array is built for.
    pub raid_disks: u32,
    /// `clean`, `active`, `degraded`, …
    pub state: String,
    /// Usable size in bytes.
    pub size_bytes: u64,
}

/// The LVM configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lvm {
    /// Physical volumes.
    pub pvs: Vec<LvmPv>,
    /// Volume groups.
    pub vgs: Vec<LvmVg>,
    /// Logical volumes.
    pub lvs: Vec<LvmLv>,
}

/// An LVM physical volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmPv {
    /// Device path, e.g. `/dev/md0`.
    pub device: String,
    /// Its volume group, if any.
    pub vg: String,
    /// PV UUID.
    pub uuid: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// An LVM volume group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmVg {
    /// Name.
    pub name: String,
    /// VG UUID.
    pub uuid: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Unallocated bytes.
    pub free_bytes: u64,
    /// Extent size in bytes.
    pub extent_bytes: u64,
}

/// An LVM logical volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmLv {
    /// Name.
    pub name: String,
    /// Its volume group.
    pub vg: String,
    /// LV UUID.
    pub uuid: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Segment type: `linear`, `striped`, `raid1`, `thin`, `thin-pool`, …
    pub segtype: String,
    /// The thin pool of a thin volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The origin of a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The `lv_attr` string as LVM reports it.
    pub attr: String,
}

/// A filesystem on a block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filesystem {
    /// Device path, e.g. `/dev/vg0/root` or `/dev/vda1`.
    pub device: String,
    /// `ext4`, `xfs`, `vfat`, `btrfs`, `swap`, …
    pub fstype: String,
    /// Filesystem UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Filesystem label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Size of the device in bytes.
    pub size_bytes: u64,
    /// Bytes in use (mounted filesystems only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Where it is mounted now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mountpoints: Vec<String>,
    /// Mount options in effect (first mount point).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

/// A line of `/etc/fstab`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FstabEntry {
    /// What to mount (`UUID=…`, `/dev/…`, `LABEL=…`).
    pub spec: String,
    /// Where.
    pub file: String,
    /// Filesystem type.
    pub vfstype: String,
    /// Options.
    pub options: String,
    /// Dump frequency.
    pub freq: u32,
    /// fsck pass.
    pub passno: u32,
}

/// A line of `/etc/crypttab`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrypttabEntry {
    /// Mapped name.
    pub name: String,
    /// Encrypted device.
    pub device: String,
    /// Key file or `none`.
    pub key: String,
    /// Options.
    pub options: String,
}

/// An active swap area.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swap {
    /// Device or file.
    pub device: String,
    /// `partition` or `file`.
    pub kind: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Priority.
    pub priority: i32,
}

/// Network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Every interface, virtual ones included.
    pub interfaces: Vec<Interface>,
    /// Routes of the main table.
    pub routes: Vec<Route>,
    /// Resolver configuration.
    pub dns: Dns,
    /// The systems that configure interfaces on this machine, with their files.
    pub managed_by: Vec<NetConfigSystem>,
}

/// A network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Kernel name.
    pub name: String,
    /// `ether`, `loopback`, `vlan`, `bond`, `bridge`, `veth`, `tun`, …
    pub kind: String,
    /// Hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The factory address where it differs from `mac` — e.g. the second member of
    /// an active-backup bond carries the bond's address. Match target NICs on this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permanent_mac: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Operational state, e.g. `UP`.
    pub state: String,
    /// Addresses with prefix length, e.g. `192.0.2.10/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// VLAN id (VLAN interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_id: Option<u16>,
    /// The lower interface (VLAN parent, veth peer, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// The bond or bridge this interface is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Bond mode (bonds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bond_mode: Option<String>,
}

/// A route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination, `default` or a prefix.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Outgoing interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<u32>,
    /// `static`, `dhcp`, `kernel`, `boot`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in order.
    pub nameservers: Vec<String>,
    /// Search domains.
    pub search: Vec<String>,
}

/// A system that configures network interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfigSystem {
    /// `ifupdown`, `systemd-networkd`, `netplan`, `NetworkManager`, `network-scripts`,
    /// `wicked`.
    pub system: String,
    /// Its configuration files that exist here.
    pub files: Vec<String>,
    /// Whether its service is enabled.
    pub enabled: bool,
}

/// Accounts and directory membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// Accounts in `/etc/passwd` with a login UID (1000 ≤ uid < 65534) plus root.
    pub local_users: u32,
    /// sssd configured.
    pub sssd: bool,
    /// LDAP used for accounts (nsswitch or nslcd).
    pub ldap: bool,
    /// Kerberos realm configured.
    pub kerberos: bool,
    /// Joined to an Active Directory domain.
    pub active_directory: bool,
    /// The files and settings that showed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
}

/// Services, packages, listening sockets and application configs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Apps {
    /// Services started at boot, e.g. `nginx.service`.
    pub services: Vec<String>,
    /// Installed packages.
    pub packages: Vec<Package>,
    /// The package database they came from: `dpkg`, `rpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_manager: Option<String>,
    /// Sockets listening for connections or datagrams.
    pub listening: Vec<Listener>,
    /// Configurations of known applications.
    pub configs: Vec<AppConfig>,
}

/// An installed package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
}

/// A listening socket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// `tcp`, `tcp6`, `udp`, `udp6`.
    pub proto: String,
    /// Local address.
    pub address: String,
    /// Local port.
    pub port: u16,
    /// Owning process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Owning process name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The systemd unit of the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A known application's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppConfig {
    /// `nginx`, `apache`, `mysql`, `postgresql`, `redis`, …
    pub app: String,
    /// Its configuration files.
    pub files: Vec<String>,
    /// Addresses it listens on (`ADDR:PORT` or `PORT`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    /// Addresses it connects to (upstreams, replication sources).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connects: Vec<String>,
}

fn is_mac(s: &str) -> bool {
    s.len() == 17
        && s.split(':').count() == 6
        && s.split(':').all(|o| {
            o.len() == 2
                && o.chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

impl Survey {
    /// Checks the survey's own consistency: formats of MACs and PCI IDs, sector sizes,
    /// partitions inside their disks, unique partition numbers. Returns the problems
    /// found, each naming the object; empty when the survey is sound.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for n in &self.nics {
            if !is_mac(&n.mac) {
                p.push(format!(
                    "NIC {}: MAC {:?} is not aa:bb:cc:dd:ee:ff",
                    n.name, n.mac
                ));
            }
        }
        for d in &self.disks {
            if d.size_bytes == 0 {
                p.push(format!("disk {}: size 0", d.name));
            }
            for (what, s) in [
                ("logical", d.logical_sector),
                ("physical", d.physical_sector),
            ] {
                if s != 0 && (s < 512 || !s.is_power_of_two()) {
                    p.push(format!("disk {}: {what} sector size {s}", d.name));
                }
            }
        }
        for dev in &self.hardware.pci {
            let ids = [
                &dev.vendor_id,
                &dev.device_id,
                &dev.subsystem_vendor_id,
                &dev.subsystem_device_id,
            ];
            if !ids.iter().all(|i| is_hex(i, 4)) || !is_hex(&dev.class, 6) {
                p.push(format!(
                    "PCI device {}: malformed IDs {ids:?} class {:?}",
                    dev.address, dev.class
                ));
            }
        }
        for t in &self.os.storage.partition_tables {
            let disk = self.disks.iter().find(|d| d.name == t.disk);
            let mut numbers = std::collections::BTreeSet::new();
            for part in &t.partitions {
                if !numbers.insert(part.number) {
                    p.push(format!(
                        "{}: partition number {} twice",
                        t.disk, part.number
                    ));
                }
                if let Some(d) = disk
                    && part.start_bytes + part.size_bytes > d.size_bytes
                {
                    p.push(format!(
                        "{}: ends past the end of disk {}",
                        part.name, d.name
                    ));
                }
            }
        }
        for f in &self.os.storage.filesystems {
            if f.fstype.is_empty() {
                p.push(format!("filesystem on {}: no type", f.device));
            }
        }
        for l in &self.apps.listening {
            if l.port == 0 {
                p.push(format!("{} listener on {}: port 0", l.proto, l.address));
            }
        }
        p
    }
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

impl Survey {
    /// The survey as aligned text for people (`ferry agent show`, `ferry-agent survey`).
    pub fn render(&self) -> String {
        let mut o = Vec::new();
        let mut line = |k: &str, v: String| o.push(format!("{k:<10}{v}"));
        let h = &self.hardware;
        line(
            "host",
            format!(
                "{} ({}, {})",
                self.hostname, self.os.distro.pretty_name, self.kernel
            ),
        );
        line(
            "cpu",
            format!(
                "{} — {} socket(s), {} core(s), {} thread(s){}",
                h.cpu.model,
                h.cpu.sockets,
                h.cpu.cores,
                h.cpu.threads.max(self.cpus),
                if h.cpu.virtualization { ", VT" } else { "" }
            ),
        );
        line("memory", gib(self.memory_bytes));
        let sb = match h.firmware.secure_boot {
            Some(true) => ", Secure Boot on",
            Some(false) => ", Secure Boot off",
            None => "",
        };
        line(
            "firmware",
            format!(
                "{:?}{sb} {}",
                h.firmware.mode,
                h.firmware.version.clone().unwrap_or_default()
            )
            .to_lowercase()
            .trim_end()
            .to_string(),
        );
        let sys = &h.system;
        if sys.vendor.is_some() || sys.product.is_some() {
            line(
                "system",
                format!(
                    "{} {} serial {} uuid {}",
                    sys.vendor.clone().unwrap_or_default(),
                    sys.product.clone().unwrap_or_default(),
                    sys.serial.clone().unwrap_or("-".into()),
                    sys.uuid.clone().unwrap_or("-".into())
                ),
            );
        }
        if h.platform.hypervisor.is_some() || h.platform.cloud.is_some() {
            line(
                "platform",
                format!(
                    "{} {}",
                    h.platform.hypervisor.clone().unwrap_or("bare metal".into()),
                    h.platform.cloud.clone().unwrap_or_default()
                )
                .trim()
                .to_string(),
            );
        }
        line(
            "init",
            format!(
                "{}, boot loader {}",
                self.os.init,
                self.os
                    .boot_loader
                    .as_ref()
                    .map_or("-".to_string(), |b| b.kind.clone())
            ),
        );
        for d in &self.disks {
            line(
                "disk",
                format!(
                    "{} {} {} {} {}",
                    d.name,
                    gib(d.size_bytes),
                    d.transport.clone().unwrap_or_default(),
                    d.model.clone().unwrap_or_default(),
                    d.serial.clone().unwrap_or_default()
                )
                .trim_end()
                .to_string(),
            );
        }
        for t in &self.os.storage.partition_tables {
            for p in &t.partitions {
                line(
                    "partition",
                    format!(
                        "{} {} #{} {} {}",
                        p.name,
                        t.kind,
                        p.number,
                        gib(p.size_bytes),
                        p.label.clone().unwrap_or_default()
                    )
                    .trim_end()
                    .to_string(),
                );
            }
        }
        for m in &self.os.storage.md_arrays {
            line(
                "raid",
                format!(
                    "{} {} [{}] {} {}",
                    m.device,
                    m.level,
                    m.members.join(" "),
                    m.state,
                    gib(m.size_bytes)
                ),
            );
        }
        for lv in &self.os.storage.lvm.lvs {
            line(
                "lv",
                format!(
                    "{}/{} {} {}",
                    lv.vg,
                    lv.name,
                    lv.segtype,
                    gib(lv.size_bytes)
                ),
            );
        }
        for f in &self.os.storage.filesystems {
            line(
                "fs",
                format!(
                    "{} {} {} {}",
                    f.device,
                    f.fstype,
                    f.label.clone().unwrap_or_default(),
                    f.mountpoints.join(",")
                )
                .trim_end()
                .to_string(),
            );
        }
        for n in &self.nics {
            line(
                "nic",
                format!(
                    "{} {} {} {}",
                    n.name,
                    n.mac,
                    n.driver.clone().unwrap_or_default(),
                    if n.up { "up" } else { "down" }
                ),
            );
        }
        for i in &self.os.network.interfaces {
            if !i.addresses.is_empty() {
                line("address", format!("{} {}", i.name, i.addresses.join(" ")));
            }
        }
        for r in self.os.network.routes.iter().filter(|r| r.dst == "default") {
            line(
                "gateway",
                format!(
                    "{} via {}",
                    r.gateway.clone().unwrap_or_default(),
                    r.dev.clone().unwrap_or_default()
                ),
            );
        }
        for m in &self.os.network.managed_by {
            line(
                "net conf",
                format!(
                    "{} ({} file(s){})",
                    m.system,
                    m.files.len(),
                    if m.enabled { ", enabled" } else { "" }
                ),
            );
        }
        line(
            "packages",
            format!(
                "{} ({})",
                self.apps.packages.len(),
                self.apps.package_manager.clone().unwrap_or("-".into())
            ),
        );
        line("services", self.apps.services.len().to_string());
        for l in &self.apps.listening {
            line(
                "listens",
                format!(
                    "{} {}:{} {}",
                    l.proto,
                    l.address,
                    l.port,
                    l.service.clone().or(l.process.clone()).unwrap_or_default()
                )
                .trim_end()
                .to_string(),
            );
        }
        for g in &self.gaps {
            line("unknown", format!("{}: {}", g.what, g.why));
        }
        o.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_what_is_wrong() {
        let mut s = Survey {
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
                ..Default::default()
            }],
            disks: vec![Disk {
                name: "vda".into(),
                size_bytes: 1 << 30,
                logical_sector: 512,
                physical_sector: 4096,
                ..Default::default()
            }],
            ..Default::default()
        };
        s.os.storage.partition_tables.push(PartitionTable {
            disk: "vda".into(),
            kind: "gpt".into(),
            id: None,
            partitions: vec![Partition {
                name: "vda1".into(),
                number: 1,
                start_bytes: 1 << 20,
                size_bytes: 1 << 29,
                ..Default::default()
            }],
        });
        assert_eq!(s.validate(), Vec::<String>::new());
        s.nics[0].mac = "52-54-00-12-34-56".into();
        s.disks[0].physical_sector = 1000;
        s.os.storage.partition_tables[0].partitions[0].size_bytes = 1 << 30;
        let problems = s.validate();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("NIC eth0"));
        assert!(problems[1].contains("physical sector size 1000"));
        assert!(problems[2].starts_with("vda1: ends past"));
    }
}
