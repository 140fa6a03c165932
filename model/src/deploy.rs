//! Deploy plans: the storage layout, network, host name, boot loader, drivers and
//! software a ramdisk agent lays out on a target and restores an image into; their
//! validation before any disk is touched, and the default plan for a target.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::image::Manifest;
use crate::survey::{BootMode, Dns, Survey};

/// The plan format this build writes; agents refuse newer ones.
pub const PLAN_VERSION: u32 = 1;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Everything a deploy does to one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    /// [`PLAN_VERSION`] when written.
    pub version: u32,
    /// The image restored.
    pub image: String,
    /// Its capture (recovery point); the latest when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Disks, arrays, volume groups and filesystems.
    pub storage: StorageLayout,
    /// Interfaces, routes and resolvers of the migrated system.
    pub network: NetworkPlan,
    /// The migrated system's host name.
    pub hostname: String,
    /// How the target boots.
    pub boot: BootPlan,
    /// Kernel modules the migrated system must have.
    #[serde(default)]
    pub drivers: DriverPlan,
    /// Files and packages put into the migrated system.
    #[serde(default)]
    pub inject: Injections,
    /// Scripts run in the migrated system after it is configured, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scripts: Vec<Script>,
    /// On failure, leave the disks as they are instead of wiping the new partition
    /// tables (for a post-mortem; such a disk may boot half-written).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_on_failure: bool,
    /// Follow the capture while it is still running (a direct migration): wait up
    /// to this many seconds for each of its filesystems, restoring each as soon as
    /// it is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow_secs: Option<u64>,
}

/// The target's storage, bottom up: disks and their partitions, RAID arrays, LVM
/// volume groups, filesystems. Partitions, arrays and logical volumes (`vg/lv`) are
/// referred to by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageLayout {
    /// Disks to partition (every other disk is left alone).
    pub disks: Vec<DiskLayout>,
    /// Software RAID arrays.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub md: Vec<MdLayout>,
    /// LVM volume groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vgs: Vec<VgLayout>,
    /// Filesystems and swap.
    pub filesystems: Vec<FsLayout>,
}

/// One disk's new partition table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLayout {
    /// Kernel name, e.g. `vda`, `sda`, `nvme0n1`.
    pub disk: String,
    /// Its size as the target's survey saw it; a deploy refuses a disk whose size
    /// differs (the wrong disk).
    pub size_bytes: u64,
    /// Its WWN or serial number as the target's survey saw it, when it has one; a
    /// deploy refuses a disk that has another (kernel names can change between
    /// boots, and disks of one size are common).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Partition table kind.
    pub table: TableKind,
    /// Partitions in order; numbered from 1.
    pub partitions: Vec<PartLayout>,
}

/// A partition table kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR table (primary partitions only, disks up to 2 TiB).
    Mbr,
}

/// A partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartLayout {
    /// The name the plan refers to it by, e.g. `root`; unique in the plan.
    pub name: String,
    /// Size in bytes, a multiple of 1 MiB; absent: the rest of the disk (last
    /// partition only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// What it holds.
    pub role: PartRole,
}

/// What a partition holds; it sets the partition type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartRole {
    /// GRUB's core image on a BIOS machine with GPT (no filesystem).
    BiosBoot,
    /// The EFI system partition (a vfat filesystem, usually at `/boot/efi`).
    Esp,
    /// A member of a RAID array.
    Raid,
    /// An LVM physical volume.
    Lvm,
    /// A filesystem or swap directly.
    Data,
}

/// A software RAID array (mdadm, metadata 1.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdLayout {
    /// Its name: the array is `/dev/md/NAME`.
    pub name: String,
    /// `raid0`, `raid1`, `raid5`, `raid6` or `raid10`.
    pub level: String,
    /// Member partitions (role `raid`), by name.
    pub members: Vec<String>,
}

/// An LVM volume group and its logical volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VgLayout {
    /// Volume group name.
    pub name: String,
    /// Physical volumes: partitions (role `lvm`) or arrays, by name.
    pub pvs: Vec<String>,
    /// Logical volumes, referred to as `VG/LV`.
    pub lvs: Vec<LvLayout>,
}

/// A logical volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvLayout {
    /// Its name within the volume group.
    pub name: String,
    /// Size in bytes; absent: what is left in the group (one per group at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

/// A filesystem (or swap) made on a device of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsLayout {
    /// The device: a partition, an array or a logical volume (`VG/LV`), by name.
    pub device: String,
    /// `ext4`, `xfs`, `vfat`, `btrfs` or `swap`; it may differ from the source's.
    pub fstype: String,
    /// Filesystem label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Mount point in the migrated system (none for swap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Mount options for fstab; `defaults` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
    /// The image's filesystem (its mount point on the source) restored into it;
    /// none for a new, empty one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The UUID to make it with, e.g. the source filesystem's, so that references
    /// outside fstab (`resume=`, crypttab, boot entries) still hold; a new one when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// The migrated system's network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPlan {
    /// Interfaces.
    pub interfaces: Vec<IfacePlan>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RoutePlan>,
    /// Resolvers.
    #[serde(default)]
    pub dns: Dns,
}

/// One interface of the migrated system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfacePlan {
    /// Its name in the migrated system; a physical one is pinned to its MAC.
    pub name: String,
    /// What it is.
    #[serde(flatten)]
    pub kind: IfaceKind,
    /// Static addresses with prefix length, e.g. `192.0.2.10/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Take an address by DHCP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
    /// MTU, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// The kind of an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum IfaceKind {
    /// A NIC of the target, by its MAC.
    Ethernet {
        /// `aa:bb:cc:dd:ee:ff`.
        mac: String,
    },
    /// A VLAN on another interface.
    Vlan {
        /// The interface it rides on.
        link: String,
        /// VLAN id, 1 to 4094.
        id: u16,
    },
    /// A bond of interfaces.
    Bond {
        /// Member interfaces.
        members: Vec<String>,
        /// Bond mode, e.g. `active-backup`, `802.3ad`.
        mode: String,
    },
}

/// A route of the migrated system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePlan {
    /// `default` or a prefix.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Interface, by its name in the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// How the target boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPlan {
    /// BIOS or UEFI (the target's firmware).
    pub mode: BootMode,
    /// The disks the boot loader goes on: every member of a mirrored boot.
    pub disks: Vec<String>,
}

/// Kernel modules the migrated system must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverPlan {
    /// Module names to add to the initramfs (e.g. the target's storage driver);
    /// the target's hardware adds its own at deploy time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// A folder of drivers by kernel version (`VERSION/…/*.ko`) to take missing
    /// modules from, where the ramdisk's own kernel is another version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
}

/// Software put into the migrated system.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Injections {
    /// Files written (replacing what is there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InjectFile>,
    /// Package files (`.deb`, `.rpm`) installed with the system's package tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<String>,
}

/// A file written into the migrated system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectFile {
    /// Absolute path in the migrated system.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Its text.
    pub content: String,
}

/// A script run in the migrated system (in a chroot) after it is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Script {
    /// A name for progress and errors.
    pub name: String,
    /// Its text, run by `/bin/sh`; a non-zero exit fails the deploy.
    pub content: String,
}

/// One step of a deploy and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTime {
    /// The step, e.g. `partition`.
    pub step: String,
    /// Milliseconds it took.
    pub millis: u64,
}

/// What the image needs of a filesystem it restores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFs {
    /// Its mount point on the source, e.g. `/`.
    pub path: String,
    /// Bytes used on the source.
    pub used_bytes: u64,
    /// Block data, not a tree.
    pub raw: bool,
}

impl SourceFs {
    /// The filesystems of an image's manifest (also those a partial one has still to
    /// write), with the space each used on the source where its survey says, else
    /// the bytes captured.
    pub fn of(manifest: &Manifest) -> Vec<SourceFs> {
        let used = |path: &str| {
            let survey = manifest.survey.as_deref()?;
            survey
                .os
                .storage
                .filesystems
                .iter()
                .find(|f| f.mountpoints.iter().any(|m| m == path))?
                .used_bytes
        };
        let written = manifest.filesystems.iter().map(|f| SourceFs {
            path: f.path.clone(),
            used_bytes: used(&f.path).unwrap_or(f.bytes),
            raw: f.raw,
        });
        let pending = manifest.pending.iter().map(|f| SourceFs {
            path: f.path.clone(),
            used_bytes: used(&f.path).unwrap_or(0),
            raw: f.raw,
        });
        written.chain(pending).collect()
    }

    /// The smallest filesystem it fits into: its data, a tenth more, and 128 MiB
    /// for the filesystem's own metadata and journal.
    pub fn needs(&self) -> u64 {
        self.used_bytes + self.used_bytes / 10 + 128 * MIB
    }
}

/// Filesystem types a plan can make.
pub const FSTYPES: [&str; 5] = ["ext4", "xfs", "vfat", "btrfs", "swap"];

/// Usable bytes of a partition table's disk: 1 MiB before the first partition, and
/// 1 MiB at the end for GPT's backup.
fn usable(disk: &DiskLayout) -> u64 {
    let tail = if disk.table == TableKind::Gpt { MIB } else { 0 };
    disk.size_bytes.saturating_sub(MIB + tail) / MIB * MIB
}

/// Bytes an array built from members of `size` offers: mdadm keeps up to 1/1024 of a
/// member (at least 1 MiB, at most 128 MiB) before the data, plus 1 MiB for its
/// superblock and bitmap.
fn md_capacity(level: &str, members: &[u64]) -> Option<u64> {
    let n = members.len() as u64;
    let smallest = *members.iter().min()?;
    let each = smallest.saturating_sub((smallest / 1024).clamp(MIB, 128 * MIB) + MIB);
    match level {
        "raid0" if n >= 2 => Some(each * n),
        "raid1" if n >= 2 => Some(each),
        "raid5" if n >= 3 => Some(each * (n - 1)),
        "raid6" if n >= 4 => Some(each * (n - 2)),
        "raid10" if n >= 2 => Some(each * n / 2),
        _ => None,
    }
}

/// Bytes a volume group offers in 4 MiB extents, each PV keeping 1 MiB of metadata.
fn vg_capacity(pvs: &[u64]) -> u64 {
    pvs.iter()
        .map(|p| p.saturating_sub(MIB) / (4 * MIB) * (4 * MIB))
        .sum()
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_prefix(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    match (addr.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
        _ => false,
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Block devices of a plan by name, with their sizes as far as the plan fixes them.
struct Devices {
    /// Name → (size in bytes, what it is: `partition`, `array`, `volume`).
    sizes: BTreeMap<String, (u64, &'static str)>,
    /// Partition name → its role.
    roles: BTreeMap<String, PartRole>,
    /// Partition name → its disk.
    disk_of: BTreeMap<String, String>,
}

impl DeployPlan {
    /// The problems that make this plan impossible, each naming the object and what
    /// is wrong; empty when it can be carried out. `sources` are the image's
    /// filesystems. Checked before any disk is touched.
    pub fn validate(&self, sources: &[SourceFs]) -> Vec<String> {
        let mut p = Vec::new();
        if self.version > PLAN_VERSION {
            p.push(format!(
                "plan version {} is newer than this agent's {PLAN_VERSION}: update the agent",
                self.version
            ));
        }
        if !is_hostname(&self.hostname) {
            p.push(format!(
                "host name {:?}: letters, digits and hyphens in dot-separated labels",
                self.hostname
            ));
        }
        let devices = self.check_disks(&mut p);
        let devices = self.check_arrays_and_groups(devices, &mut p);
        self.check_filesystems(&devices, sources, &mut p);
        self.check_boot(&devices, &mut p);
        self.check_network(&mut p);
        for f in &self.inject.files {
            if !f.path.starts_with('/') || f.path.split('/').any(|c| c == "..") {
                p.push(format!(
                    "injected file {:?}: give an absolute path without ..",
                    f.path
                ));
            }
        }
        p
    }

    fn check_disks(&self, p: &mut Vec<String>) -> Devices {
        let mut d = Devices {
            sizes: BTreeMap::new(),
            roles: BTreeMap::new(),
            disk_of: BTreeMap::new(),
        };
        let mut disks = BTreeSet::new();
        for disk in &self.storage.disks {
            if !disks.insert(&disk.disk) {
                p.push(format!("disk {}: laid out twice", disk.disk));
            }
            if disk.partitions.is_empty() {
                p.push(format!("disk {}: no partitions", disk.disk));
            }
            if disk.table == TableKind::Mbr {
                if disk.partitions.len() > 4 {
                    p.push(format!(
                        "disk {}: an MBR table holds 4 partitions; use GPT",
                        disk.disk
                    ));
                }
                if disk.size_bytes > 2 << 40 {
                    p.push(format!(
                        "disk {}: an MBR table reaches 2 TiB of it; use GPT",
                        disk.disk
                    ));
                }
            }
            let usable = usable(disk);
            let fixed: u64 = disk.partitions.iter().filter_map(|x| x.size_bytes).sum();
            let rest = usable.saturating_sub(fixed);
            for (i, part) in disk.partitions.iter().enumerate() {
                let size = match part.size_bytes {
                    Some(s) if s == 0 || s % MIB != 0 => {
                        p.push(format!(
                            "partition {}: size {s} is not a positive multiple of 1 MiB",
                            part.name
                        ));
                        s
                    }
                    Some(s) => s,
                    None if i + 1 != disk.partitions.len() => {
                        p.push(format!(
                            "partition {}: only the last partition of {} can take the rest of the disk",
                            part.name, disk.disk
                        ));
                        0
                    }
                    None => rest,
                };
                if part.role == PartRole::BiosBoot && disk.table != TableKind::Gpt {
                    p.push(format!(
                        "partition {}: a BIOS boot partition is for GPT disks; MBR needs none",
                        part.name
                    ));
                }
                if d.sizes
                    .insert(part.name.clone(), (size, "partition"))
                    .is_some()
                {
                    p.push(format!("name {}: used twice", part.name));
                }
                d.roles.insert(part.name.clone(), part.role);
                d.disk_of.insert(part.name.clone(), disk.disk.clone());
            }
            let rest_needed = disk.partitions.iter().any(|x| x.size_bytes.is_none());
            if fixed > usable || (rest_needed && rest < MIB) {
                p.push(format!(
                    "disk {}: does not fit: its partitions need {} MiB{}, the disk has {} MiB",
                    disk.disk,
                    fixed / MIB,
                    if rest_needed { " and more" } else { "" },
                    usable / MIB
                ));
            }
        }
        d
    }

    fn check_arrays_and_groups(&self, mut d: Devices, p: &mut Vec<String>) -> Devices {
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut take = |name: &str, by: &str, p: &mut Vec<String>| {
            if !used.insert(name.to_string()) {
                // Keep the first user; later ones are errors.
                p.push(format!("{name}: used by {by} and something else too"));
            }
        };
        let lvm_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 64
                && !n.starts_with('-')
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c))
        };
        for name in self.storage.md.iter().map(|m| &m.name).chain(
            self.storage
                .vgs
                .iter()
                .flat_map(|g| std::iter::once(&g.name).chain(g.lvs.iter().map(|l| &l.name))),
        ) {
            if !lvm_name(name) {
                p.push(format!(
                    "name {name:?}: arrays, volume groups and volumes take letters, digits and + _ . - (not first)"
                ));
            }
        }
        for md in &self.storage.md {
            let mut sizes = Vec::new();
            for m in &md.members {
                take(m, &format!("array {}", md.name), p);
                match (d.sizes.get(m), d.roles.get(m)) {
                    (Some((size, _)), Some(PartRole::Raid)) => sizes.push(*size),
                    (Some(_), _) => p.push(format!(
                        "array {}: member {m} is not a partition of role raid",
                        md.name
                    )),
                    (None, _) => p.push(format!("array {}: no partition named {m}", md.name)),
                }
            }
            let capacity = md_capacity(&md.level, &sizes);
            if capacity.is_none() && sizes.len() == md.members.len() {
                p.push(format!(
                    "array {}: {} with {} members is not an array mdadm makes (raid0/1/10: 2+, raid5: 3+, raid6: 4+)",
                    md.name,
                    md.level,
                    md.members.len()
                ));
            }
            if d.sizes
                .insert(md.name.clone(), (capacity.unwrap_or(0), "array"))
                .is_some()
            {
                p.push(format!("name {}: used twice", md.name));
            }
        }
        for vg in &self.storage.vgs {
            let mut pvs = Vec::new();
            for pv in &vg.pvs {
                take(pv, &format!("volume group {}", vg.name), p);
                match (d.sizes.get(pv), d.roles.get(pv)) {
                    (Some((size, "array")), _) | (Some((size, _)), Some(PartRole::Lvm)) => {
                        pvs.push(*size)
                    }
                    (Some(_), _) => p.push(format!(
                        "volume group {}: {pv} is not a partition of role lvm or an array",
                        vg.name
                    )),
                    (None, _) => p.push(format!("volume group {}: no device named {pv}", vg.name)),
                }
            }
            let capacity = vg_capacity(&pvs);
            // lvcreate rounds each volume up to whole 4 MiB extents.
            let fixed: u64 = vg
                .lvs
                .iter()
                .filter_map(|l| l.size_bytes)
                .map(|s| s.div_ceil(4 * MIB) * 4 * MIB)
                .sum();
            let rests = vg.lvs.iter().filter(|l| l.size_bytes.is_none()).count();
            if rests > 1 {
                p.push(format!(
                    "volume group {}: only one volume can take what is left",
                    vg.name
                ));
            }
            if fixed > capacity || (rests > 0 && capacity - fixed < 4 * MIB) {
                p.push(format!(
                    "volume group {}: does not fit: its volumes need {} MiB{}, its physical volumes offer {} MiB",
                    vg.name,
                    fixed / MIB,
                    if rests > 0 { " and more" } else { "" },
                    capacity / MIB
                ));
            }
            for lv in &vg.lvs {
                let size = lv
                    .size_bytes
                    .unwrap_or_else(|| capacity.saturating_sub(fixed));
                let name = format!("{}/{}", vg.name, lv.name);
                if d.sizes.insert(name.clone(), (size, "volume")).is_some() {
                    p.push(format!("name {name}: used twice"));
                }
            }
        }
        // Partitions of role raid or lvm that nothing uses are a plan mistake.
        for (name, role) in &d.roles {
            if matches!(role, PartRole::Raid | PartRole::Lvm) && !used.contains(name) {
                p.push(format!(
                    "partition {name}: role {role:?} but no array or volume group uses it"
                ));
            }
        }
        d
    }

    fn check_filesystems(&self, d: &Devices, sources: &[SourceFs], p: &mut Vec<String>) {
        let mut mounts = BTreeSet::new();
        let mut restored = BTreeSet::new();
        let mut on = BTreeSet::new();
        for fs in &self.storage.filesystems {
            let what = format!(
                "filesystem on {} ({})",
                fs.device,
                fs.mount.as_deref().unwrap_or(&fs.fstype)
            );
            let limit = match fs.fstype.as_str() {
                "vfat" => 11,
                "xfs" => 12,
                "ext4" | "swap" => 16,
                _ => 255,
            };
            if let Some(l) = &fs.label
                && (l.len() > limit || l.contains(['/', ' ']))
            {
                p.push(format!(
                    "{what}: label {l:?}: a {} label has at most {limit} characters, without / or spaces",
                    fs.fstype
                ));
            }
            if !FSTYPES.contains(&fs.fstype.as_str()) {
                p.push(format!(
                    "{what}: type {} is not one of {}",
                    fs.fstype,
                    FSTYPES.join(", ")
                ));
            }
            if !on.insert(&fs.device) {
                p.push(format!("{what}: {} already holds a filesystem", fs.device));
            }
            let size = match d.sizes.get(&fs.device) {
                Some((size, _)) => *size,
                None => {
                    p.push(format!(
                        "{what}: no partition, array or volume named {}",
                        fs.device
                    ));
                    continue;
                }
            };
            if d.roles.get(&fs.device) == Some(&PartRole::Esp) && fs.fstype != "vfat" {
                p.push(format!("{what}: an EFI system partition holds vfat"));
            }
            if matches!(
                d.roles.get(&fs.device),
                Some(PartRole::Raid | PartRole::Lvm | PartRole::BiosBoot)
            ) {
                p.push(format!(
                    "{what}: partition {} has a role that holds no filesystem",
                    fs.device
                ));
            }
            match (&fs.mount, fs.fstype.as_str()) {
                (Some(_), "swap") => p.push(format!("{what}: swap has no mount point")),
                (None, t) if t != "swap" => p.push(format!("{what}: give its mount point")),
                (Some(m), _) if !m.starts_with('/') => {
                    p.push(format!("{what}: mount point {m} is not absolute"));
                }
                (Some(m), _) if !mounts.insert(m.trim_end_matches('/').to_string()) => {
                    p.push(format!("{what}: two filesystems on mount point {m}"));
                }
                _ => {}
            }
            let Some(source) = &fs.source else { continue };
            if !restored.insert(source) {
                p.push(format!(
                    "{what}: source filesystem {source} is restored twice"
                ));
            }
            match sources.iter().find(|s| s.path == *source) {
                None => p.push(format!(
                    "{what}: the image has no filesystem {source} (it has {})",
                    sources
                        .iter()
                        .map(|s| s.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                Some(s) if s.raw => p.push(format!(
                    "{what}: {source} is block data in the image, not a tree to restore into a filesystem"
                )),
                Some(_) if fs.fstype == "swap" => {
                    p.push(format!("{what}: swap cannot hold the files of {source}"));
                }
                Some(s) if size < s.needs() => p.push(format!(
                    "{what}: does not fit: {source} used {} MiB on the source and needs {} MiB, {} has {} MiB",
                    s.used_bytes / MIB,
                    s.needs() / MIB,
                    fs.device,
                    size / MIB
                )),
                Some(_) => {}
            }
        }
        // Mount points are kept without a trailing slash: `/` is "".
        if !mounts.contains("") {
            p.push("no filesystem is mounted at /".to_string());
        }
    }

    fn check_boot(&self, d: &Devices, p: &mut Vec<String>) {
        if self.boot.disks.is_empty() {
            p.push("boot: name the disk(s) the boot loader goes on".to_string());
        }
        let esp_mounted = self.storage.filesystems.iter().any(|f| {
            f.fstype == "vfat"
                && f.mount.as_deref() == Some("/boot/efi")
                && d.roles.get(&f.device) == Some(&PartRole::Esp)
        });
        for disk in &self.boot.disks {
            let Some(layout) = self.storage.disks.iter().find(|x| x.disk == *disk) else {
                p.push(format!("boot: disk {disk} is not laid out by this plan"));
                continue;
            };
            let has = |role| layout.partitions.iter().any(|x| x.role == role);
            match self.boot.mode {
                BootMode::Uefi => {
                    if layout.table != TableKind::Gpt {
                        p.push(format!("boot: disk {disk}: UEFI boot needs a GPT table"));
                    }
                    if !has(PartRole::Esp) {
                        p.push(format!(
                            "boot: disk {disk}: UEFI boot needs an EFI system partition"
                        ));
                    }
                }
                BootMode::Bios if layout.table == TableKind::Gpt && !has(PartRole::BiosBoot) => {
                    p.push(format!(
                        "boot: disk {disk}: BIOS boot from GPT needs a BIOS boot partition (1 MiB)"
                    ));
                }
                BootMode::Bios => {}
                BootMode::Unknown => {}
            }
        }
        match self.boot.mode {
            BootMode::Unknown => p.push("boot: say bios or uefi".to_string()),
            BootMode::Uefi if !esp_mounted => p.push(
                "boot: UEFI boot needs a vfat filesystem on the EFI system partition at /boot/efi"
                    .to_string(),
            ),
            _ => {}
        }
    }

    fn check_network(&self, p: &mut Vec<String>) {
        let names: BTreeSet<&str> = self
            .network
            .interfaces
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        if names.len() != self.network.interfaces.len() {
            p.push("network: two interfaces with one name".to_string());
        }
        let mut macs = BTreeSet::new();
        for i in &self.network.interfaces {
            let what = format!("interface {}", i.name);
            if i.name.is_empty() || i.name.len() > 15 || i.name.contains(['/', ' ']) {
                p.push(format!(
                    "{what}: not a valid interface name (1–15 characters, no / or space)"
                ));
            }
            match &i.kind {
                IfaceKind::Ethernet { mac } => {
                    if !is_mac(mac) {
                        p.push(format!("{what}: MAC {mac:?} is not aa:bb:cc:dd:ee:ff"));
                    } else if !macs.insert(mac.to_ascii_lowercase()) {
                        p.push(format!(
                            "{what}: MAC {mac} belongs to another interface too"
                        ));
                    }
                }
                IfaceKind::Vlan { link, id } => {
                    if !names.contains(link.as_str()) {
                        p.push(format!(
                            "{what}: rides on {link}, which the plan does not have"
                        ));
                    }
                    if !(1..=4094).contains(id) {
                        p.push(format!("{what}: VLAN id {id} is not 1–4094"));
                    }
                }
                IfaceKind::Bond { members, .. } => {
                    for m in members {
                        if !names.contains(m.as_str()) {
                            p.push(format!(
                                "{what}: member {m} is not an interface of the plan"
                            ));
                        }
                    }
                }
            }
            for a in &i.addresses {
                if !is_prefix(a) {
                    p.push(format!("{what}: address {a} is not ADDRESS/PREFIX"));
                }
            }
        }
        for r in &self.network.routes {
            if let Some(dev) = &r.dev
                && !names.contains(dev.as_str())
            {
                p.push(format!(
                    "route to {}: interface {dev} is not in the plan",
                    r.dst
                ));
            }
            if let Some(gw) = &r.gateway
                && gw.parse::<std::net::IpAddr>().is_err()
            {
                p.push(format!(
                    "route to {}: gateway {gw} is not an address",
                    r.dst
                ));
            }
        }
    }
}

/// The default plan for restoring `image` (with its source survey) onto `target`:
/// the source's filesystems, volume groups and swap on the target's largest disk,
/// sized like the source (the root, or the largest, taking what is left), the boot
/// partitions the target's firmware needs, and the source's addresses, routes and
/// resolvers on the target's first NIC. A refusal says why.
pub fn default_plan(image: &Manifest, target: &Survey) -> Result<DeployPlan, String> {
    let source = image.survey.as_deref().ok_or_else(|| {
        format!(
            "image {}: its manifest carries no survey of the source, which a default plan needs; write the plan yourself",
            image.image
        )
    })?;
    let disk = target
        .disks
        .iter()
        .filter(|d| !d.removable)
        .max_by_key(|d| d.size_bytes)
        .ok_or_else(|| "target: no disk to deploy onto".to_string())?;
    let mode = match target.hardware.firmware.mode {
        BootMode::Uefi => BootMode::Uefi,
        _ => BootMode::Bios,
    };
    let storage = &source.os.storage;
    let mut parts = Vec::new();
    let mut filesystems = Vec::new();
    let mut vgs: Vec<VgLayout> = Vec::new();
    match mode {
        BootMode::Uefi => {
            parts.push(PartLayout {
                name: "esp".into(),
                size_bytes: Some(512 * MIB),
                role: PartRole::Esp,
            });
            filesystems.push(FsLayout {
                device: "esp".into(),
                fstype: "vfat".into(),
                label: Some("EFI".into()),
                mount: Some("/boot/efi".into()),
                options: Some("umask=0077".into()),
                source: None,
                uuid: None,
            });
        }
        _ => parts.push(PartLayout {
            name: "biosboot".into(),
            size_bytes: Some(MIB),
            role: PartRole::BiosBoot,
        }),
    }
    // The source's filesystems, where the image has them (an ESP is made anew).
    // (also those a capture in progress has still to write).
    let needs = SourceFs::of(image);
    let mut sources: Vec<&SourceFs> = needs
        .iter()
        .filter(|f| !f.raw && f.path != "/boot/efi")
        .collect();
    // The root last, so it can take the rest.
    sources.sort_by_key(|f| f.path == "/");
    // A smaller target shrinks every filesystem alike (never below what it needs).
    let source_disks: u64 = source
        .disks
        .iter()
        .filter(|d| !d.removable)
        .map(|d| d.size_bytes)
        .sum();
    let scale = |size: u64| match source_disks {
        0 => size,
        all if disk.size_bytes >= all => size,
        all => (size as u128 * disk.size_bytes as u128 / all as u128) as u64,
    };
    for (i, f) in sources.iter().enumerate() {
        let src = storage
            .filesystems
            .iter()
            .find(|s| s.mountpoints.contains(&f.path));
        let need = f.needs();
        let last = i + 1 == sources.len();
        // Like the source, at least what it needs, in MiB.
        let size = src
            .map_or(need, |s| scale(s.size_bytes).max(need))
            .div_ceil(MIB)
            * MIB;
        let fstype = src
            .map(|s| s.fstype.clone())
            .filter(|t| FSTYPES.contains(&t.as_str()) && t != "swap")
            .unwrap_or_else(|| "ext4".into());
        let base = match f.path.as_str() {
            "/" => "root".to_string(),
            p => p.trim_start_matches('/').replace('/', "-"),
        };
        let lv = src.and_then(|s| lv_of(source, &s.device));
        let device = match lv {
            Some((vg, lv)) => {
                let at = match vgs.iter().position(|g| g.name == vg) {
                    Some(at) => at,
                    None => {
                        vgs.push(VgLayout {
                            name: vg.clone(),
                            pvs: vec![format!("pv-{vg}")],
                            lvs: Vec::new(),
                        });
                        vgs.len() - 1
                    }
                };
                vgs[at].lvs.push(LvLayout {
                    name: lv.clone(),
                    size_bytes: Some(size),
                });
                format!("{vg}/{lv}")
            }
            None => {
                parts.push(PartLayout {
                    name: base.clone(),
                    size_bytes: (!last).then_some(size),
                    role: PartRole::Data,
                });
                base
            }
        };
        // The same type keeps the source's UUID (and references to it) valid.
        let uuid = src
            .filter(|s| s.fstype == fstype)
            .and_then(|s| s.uuid.clone());
        filesystems.push(FsLayout {
            device,
            fstype,
            label: src.and_then(|s| s.label.clone()),
            mount: Some(f.path.clone()),
            options: fstab_options(storage, &f.path),
            source: Some(f.path.clone()),
            uuid,
        });
    }
    for s in storage.swap.iter().filter(|s| s.kind == "partition") {
        let size = s.size_bytes.min(8 * GIB).div_ceil(MIB) * MIB;
        let lv = lv_of(source, &s.device);
        let device = match lv {
            Some((vg, lv)) if vgs.iter().any(|g| g.name == vg) => {
                let g = vgs
                    .iter_mut()
                    .find(|g| g.name == vg)
                    .ok_or("volume group")?;
                g.lvs.push(LvLayout {
                    name: lv.clone(),
                    size_bytes: Some(size),
                });
                format!("{vg}/{lv}")
            }
            _ => {
                let name = format!("swap{}", parts.len());
                // Before the partition that takes the rest.
                let at = parts
                    .iter()
                    .position(|x| x.size_bytes.is_none())
                    .unwrap_or(parts.len());
                parts.insert(
                    at,
                    PartLayout {
                        name: name.clone(),
                        size_bytes: Some(size),
                        role: PartRole::Data,
                    },
                );
                name
            }
        };
        filesystems.push(FsLayout {
            device,
            fstype: "swap".into(),
            label: None,
            mount: None,
            options: None,
            source: None,
            uuid: None,
        });
    }
    // One physical volume per group: the group holding the root takes the rest of
    // the disk, any other what its volumes need.
    let is_root = |vg: &str, lv: &str| {
        filesystems
            .iter()
            .any(|f| f.device == format!("{vg}/{lv}") && f.mount.as_deref() == Some("/"))
    };
    for g in &vgs {
        let holds_root = g.lvs.iter().any(|l| is_root(&g.name, &l.name));
        let need: u64 = g.lvs.iter().filter_map(|l| l.size_bytes).sum::<u64>()
            + 4 * MIB * g.lvs.len() as u64
            + 8 * MIB;
        parts.push(PartLayout {
            name: format!("pv-{}", g.name),
            size_bytes: (!holds_root).then(|| need.div_ceil(MIB) * MIB),
            role: PartRole::Lvm,
        });
    }
    // In each group, the root's volume (else the largest) takes what is left.
    for g in &mut vgs {
        let grow = (0..g.lvs.len())
            .find(|&i| is_root(&g.name, &g.lvs[i].name))
            .or_else(|| (0..g.lvs.len()).max_by_key(|&i| g.lvs[i].size_bytes));
        if let Some(i) = grow {
            g.lvs[i].size_bytes = None;
        }
    }
    // Exactly one partition takes the rest of the disk, and it comes last.
    match parts.iter().position(|x| x.size_bytes.is_none()) {
        Some(at) => {
            let rest = parts.remove(at);
            parts.push(rest);
        }
        None => {
            if let Some(last) = parts.last_mut() {
                last.size_bytes = None;
            }
        }
    }
    Ok(DeployPlan {
        version: PLAN_VERSION,
        image: image.image.clone(),
        capture: Some(image.capture.clone()),
        storage: StorageLayout {
            disks: vec![DiskLayout {
                disk: disk.name.clone(),
                size_bytes: disk.size_bytes,
                id: disk.wwn.clone().or_else(|| disk.serial.clone()),
                table: TableKind::Gpt,
                partitions: parts,
            }],
            md: Vec::new(),
            vgs,
            filesystems,
        },
        network: default_network(source, target),
        hostname: source.hostname.clone(),
        boot: BootPlan {
            mode,
            disks: vec![disk.name.clone()],
        },
        drivers: DriverPlan::default(),
        inject: Injections::default(),
        scripts: Vec::new(),
        keep_on_failure: false,
        follow_secs: None,
    })
}

/// The volume group and volume of `device` on `source`, if it is a logical volume
/// (`/dev/mapper/vg-lv` or `/dev/vg/lv`).
fn lv_of(source: &Survey, device: &str) -> Option<(String, String)> {
    source.os.storage.lvm.lvs.iter().find_map(|lv| {
        let mapper = format!(
            "/dev/mapper/{}-{}",
            lv.vg.replace('-', "--"),
            lv.name.replace('-', "--")
        );
        let direct = format!("/dev/{}/{}", lv.vg, lv.name);
        (device == mapper || device == direct).then(|| (lv.vg.clone(), lv.name.clone()))
    })
}

/// The fstab options the source used for `path`, unless they are the defaults; a
/// btrfs subvolume's are left out (the new filesystem has none).
fn fstab_options(storage: &crate::survey::Storage, path: &str) -> Option<String> {
    storage
        .fstab
        .iter()
        .find(|e| e.file == path)
        .map(|e| {
            e.options
                .split(',')
                .filter(|o| !o.starts_with("subvol=") && !o.starts_with("subvolid="))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|o| o != "defaults" && !o.is_empty())
}

/// The source's addresses on the target's first NIC, under the source interface's
/// name, with the source's routes through it and its resolvers.
fn default_network(source: &Survey, target: &Survey) -> NetworkPlan {
    let Some(nic) = target.nics.first() else {
        return NetworkPlan::default();
    };
    let net = &source.os.network;
    let first = net
        .interfaces
        .iter()
        .find(|i| i.kind == "ether" && i.master.is_none() && !i.addresses.is_empty())
        .or_else(|| net.interfaces.iter().find(|i| i.kind == "ether"));
    let name = first.map_or_else(|| nic.name.clone(), |i| i.name.clone());
    let dhcp = first.is_some_and(|i| {
        net.routes
            .iter()
            .any(|r| r.dev.as_deref() == Some(&i.name) && r.protocol.as_deref() == Some("dhcp"))
    });
    let addresses = if dhcp {
        Vec::new()
    } else {
        first
            .map(|i| {
                i.addresses
                    .iter()
                    .filter(|a| !a.starts_with("fe80:"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let routes = net
        .routes
        .iter()
        .filter(|r| first.is_some_and(|i| r.dev.as_deref() == Some(&i.name)))
        .filter(|r| r.gateway.is_some() && r.protocol.as_deref() != Some("dhcp"))
        .map(|r| RoutePlan {
            dst: r.dst.clone(),
            gateway: r.gateway.clone(),
            dev: Some(name.clone()),
        })
        .collect();
    NetworkPlan {
        interfaces: vec![IfacePlan {
            name,
            kind: IfaceKind::Ethernet {
                mac: nic.mac.clone(),
            },
            addresses,
            dhcp: dhcp || first.is_none_or(|i| i.addresses.is_empty()),
            mtu: first.map(|i| i.mtu).filter(|m| *m != 1500 && *m != 0),
        }],
        routes,
        dns: net.dns.clone(),
    }
}

/// Sample plans and their parts, for tests and documentation.
pub mod examples {
    use super::*;

    /// A filesystem on `device` at `mount`, restored from `source`.
    pub fn fs(device: &str, fstype: &str, mount: Option<&str>, source: Option<&str>) -> FsLayout {
        FsLayout {
            device: device.into(),
            fstype: fstype.into(),
            label: None,
            mount: mount.map(Into::into),
            options: None,
            source: source.map(Into::into),
            uuid: None,
        }
    }

    /// A partition of `mib` MiB (the rest of the disk when `None`).
    pub fn part(name: &str, mib: Option<u64>, role: PartRole) -> PartLayout {
        PartLayout {
            name: name.into(),
            size_bytes: mib.map(|m| m * MIB),
            role,
        }
    }

    /// `disks` of `size_bytes` each, GPT with a 1 MiB BIOS boot partition (`bios-DISK`)
    /// and a RAID member taking the rest (`raid-DISK`), and the RAID1 array `md0` over
    /// the members.
    pub fn mirror(disks: &[&str], size_bytes: u64) -> (Vec<DiskLayout>, MdLayout) {
        let layouts = disks
            .iter()
            .map(|d| DiskLayout {
                disk: d.to_string(),
                size_bytes,
                id: None,
                table: TableKind::Gpt,
                partitions: vec![
                    part(&format!("bios-{d}"), Some(1), PartRole::BiosBoot),
                    part(&format!("raid-{d}"), None, PartRole::Raid),
                ],
            })
            .collect();
        let md = MdLayout {
            name: "md0".into(),
            level: "raid1".into(),
            members: disks.iter().map(|d| format!("raid-{d}")).collect(),
        };
        (layouts, md)
    }

    /// BIOS, GPT on a 20 GiB `vda`, a /boot partition and the root on LVM (`sys/root`,
    /// xfs), swap on LVM; `ens3` with a static address.
    pub fn plan() -> DeployPlan {
        DeployPlan {
            version: PLAN_VERSION,
            image: "web1".into(),
            capture: None,
            storage: StorageLayout {
                disks: vec![DiskLayout {
                    disk: "vda".into(),
                    size_bytes: 20 * GIB,
                    id: None,
                    table: TableKind::Gpt,
                    partitions: vec![
                        part("biosboot", Some(1), PartRole::BiosBoot),
                        part("boot", Some(512), PartRole::Data),
                        part("pv", None, PartRole::Lvm),
                    ],
                }],
                md: vec![],
                vgs: vec![VgLayout {
                    name: "sys".into(),
                    pvs: vec!["pv".into()],
                    lvs: vec![
                        LvLayout {
                            name: "swap".into(),
                            size_bytes: Some(GIB),
                        },
                        LvLayout {
                            name: "root".into(),
                            size_bytes: None,
                        },
                    ],
                }],
                filesystems: vec![
                    fs("boot", "ext4", Some("/boot"), Some("/boot")),
                    fs("sys/root", "xfs", Some("/"), Some("/")),
                    fs("sys/swap", "swap", None, None),
                ],
            },
            network: NetworkPlan {
                interfaces: vec![IfacePlan {
                    name: "ens3".into(),
                    kind: IfaceKind::Ethernet {
                        mac: "52:54:00:12:34:56".into(),
                    },
                    addresses: vec!["192.0.2.10/24".into()],
                    dhcp: false,
                    mtu: None,
                }],
                routes: vec![RoutePlan {
                    dst: "default".into(),
                    gateway: Some("192.0.2.1".into()),
                    dev: Some("ens3".into()),
                }],
                dns: Dns::default(),
            },
            hostname: "web1".into(),
            boot: BootPlan {
                mode: BootMode::Bios,
                disks: vec!["vda".into()],
            },
            drivers: DriverPlan::default(),
            inject: Injections::default(),
            scripts: vec![],
            keep_on_failure: false,
            follow_secs: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::examples::{part, plan};
    use super::*;
    use crate::image::{Consistency, FsImage, MANIFEST_VERSION, RootMeta};
    use crate::survey::{
        Disk, Filesystem, FstabEntry, Interface, LvmLv, Nic, Route, Storage, Swap,
    };

    fn sources() -> Vec<SourceFs> {
        [("/", 3 * GIB), ("/boot", 100 * MIB)]
            .into_iter()
            .map(|(p, used)| SourceFs {
                path: p.into(),
                used_bytes: used,
                raw: false,
            })
            .collect()
    }

    /// The problems `change` makes in the good plan.
    fn problems(change: impl FnOnce(&mut DeployPlan)) -> Vec<String> {
        let mut p = plan();
        change(&mut p);
        p.validate(&sources())
    }

    fn says(change: impl FnOnce(&mut DeployPlan), needle: &str) {
        let p = problems(change);
        assert!(
            p.iter().any(|x| x.contains(needle)),
            "expected a problem with {needle:?}, got {p:#?}"
        );
    }

    #[test]
    fn a_sound_plan_has_no_problems_and_round_trips() {
        assert_eq!(plan().validate(&sources()), Vec::<String>::new());
        let json = serde_json::to_string(&plan()).expect("json");
        assert_eq!(
            serde_json::from_str::<DeployPlan>(&json).expect("parse"),
            plan()
        );
    }

    #[test]
    fn impossible_plans_are_refused_naming_the_object() {
        says(
            |p| p.storage.disks[0].size_bytes = 2 * GIB,
            "filesystem on sys/root (/): does not fit: / used 3072 MiB on the source and needs 3507 MiB, sys/root has 508 MiB",
        );
        says(
            |p| p.storage.disks[0].size_bytes = 400 * MIB,
            "disk vda: does not fit",
        );
        says(
            |p| p.storage.filesystems[0].mount = Some("/".into()),
            "two filesystems on mount point /",
        );
        says(
            |p| p.storage.filesystems[0].source = Some("/srv".into()),
            "the image has no filesystem /srv (it has /, /boot)",
        );
        says(
            |p| p.storage.vgs[0].lvs[0].size_bytes = Some(20 * GIB),
            "volume group sys: does not fit: its volumes need 20480 MiB and more, its physical volumes offer 19964 MiB",
        );
        says(
            |p| p.storage.vgs[0].lvs[1].size_bytes = Some(2 * GIB),
            "filesystem on sys/root (/): does not fit: / used 3072 MiB",
        );
        says(
            |p| p.storage.disks[0].partitions.swap(1, 2),
            "only the last partition of vda can take the rest",
        );
        says(
            |p| {
                p.storage.disks[0].partitions.remove(0);
            },
            "BIOS boot from GPT needs a BIOS boot partition",
        );
        says(
            |p| p.boot.mode = BootMode::Uefi,
            "UEFI boot needs an EFI system partition",
        );
        says(
            |p| p.boot.disks = vec!["vdb".into()],
            "disk vdb is not laid out",
        );
        says(
            |p| p.storage.filesystems[1].fstype = "zfs".into(),
            "type zfs is not one of",
        );
        says(
            |p| p.storage.filesystems[2].device = "sys/none".into(),
            "no partition, array or volume named sys/none",
        );
        says(
            |p| p.storage.filesystems[0].device = "pv".into(),
            "has a role that holds no filesystem",
        );
        says(
            |p| {
                p.storage.filesystems.remove(1);
            },
            "no filesystem is mounted at /",
        );
        says(|p| p.hostname = "web_1".into(), "host name \"web_1\"");
        says(
            |p| {
                p.network.interfaces[0].kind = IfaceKind::Ethernet {
                    mac: "52:54:00".into(),
                }
            },
            "interface ens3: MAC \"52:54:00\"",
        );
        says(
            |p| p.network.interfaces[0].addresses = vec!["192.0.2.300/24".into()],
            "address 192.0.2.300/24 is not ADDRESS/PREFIX",
        );
        says(
            |p| p.network.routes[0].dev = Some("eth9".into()),
            "interface eth9 is not in the plan",
        );
        says(
            |p| {
                p.storage.disks[0].table = TableKind::Mbr;
                p.storage.disks[0].partitions.remove(0);
                for i in 0..4 {
                    let name = format!("x{i}");
                    p.storage.disks[0]
                        .partitions
                        .insert(0, part(&name, Some(10), PartRole::Data));
                }
            },
            "an MBR table holds 4 partitions",
        );
        says(|p| p.version = PLAN_VERSION + 1, "update the agent");
        says(
            |p| p.storage.filesystems[1].label = Some("a-long-xfs-label".into()),
            "label \"a-long-xfs-label\": a xfs label has at most 12 characters",
        );
        says(
            |p| p.storage.vgs[0].name = "sys vg".into(),
            "name \"sys vg\": arrays",
        );
    }

    /// RAID1 over two disks with LVM on the array: sound; one member is refused, and
    /// a member of the wrong role is named.
    #[test]
    fn raid_layouts_are_checked() {
        let mirrored = |p: &mut DeployPlan| {
            let mut second = p.storage.disks[0].clone();
            second.disk = "vdb".into();
            for d in [&mut p.storage.disks[0], &mut second] {
                let n = d.disk.clone();
                d.partitions = vec![
                    part(&format!("bios-{n}"), Some(1), PartRole::BiosBoot),
                    part(&format!("raid-{n}"), None, PartRole::Raid),
                ];
            }
            p.storage.disks.push(second);
            p.storage.md = vec![MdLayout {
                name: "md0".into(),
                level: "raid1".into(),
                members: vec!["raid-vda".into(), "raid-vdb".into()],
            }];
            p.storage.vgs[0].pvs = vec!["md0".into()];
            p.storage.filesystems.remove(0);
            p.boot.disks = vec!["vda".into(), "vdb".into()];
        };
        assert_eq!(problems(mirrored), Vec::<String>::new());
        says(
            |p| {
                mirrored(p);
                p.storage.md[0].members.pop();
            },
            "raid1 with 1 members is not an array mdadm makes",
        );
        says(
            |p| {
                mirrored(p);
                p.storage.disks[1].partitions[1].role = PartRole::Data;
            },
            "member raid-vdb is not a partition of role raid",
        );
    }

    /// A source: BIOS, /boot on vda1, root on LVM `sys/root`, swap on LVM, a static
    /// address on ens3; 10 GiB disk.
    fn source() -> Manifest {
        let survey = Survey {
            hostname: "web1".into(),
            disks: vec![Disk {
                name: "vda".into(),
                size_bytes: 10 * GIB,
                ..Default::default()
            }],
            os: crate::survey::Os {
                storage: Storage {
                    filesystems: vec![
                        Filesystem {
                            device: "/dev/vda2".into(),
                            fstype: "ext4".into(),
                            size_bytes: 512 * MIB,
                            used_bytes: Some(80 * MIB),
                            mountpoints: vec!["/boot".into()],
                            ..Default::default()
                        },
                        Filesystem {
                            device: "/dev/mapper/sys-root".into(),
                            fstype: "ext4".into(),
                            uuid: Some("5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f50".into()),
                            size_bytes: 8 * GIB,
                            used_bytes: Some(2 * GIB),
                            mountpoints: vec!["/".into()],
                            label: Some("root".into()),
                            ..Default::default()
                        },
                    ],
                    lvm: crate::survey::Lvm {
                        lvs: ["root", "swap"]
                            .into_iter()
                            .map(|n| LvmLv {
                                name: n.into(),
                                vg: "sys".into(),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    },
                    swap: vec![Swap {
                        device: "/dev/mapper/sys-swap".into(),
                        kind: "partition".into(),
                        size_bytes: GIB,
                        priority: -2,
                    }],
                    fstab: vec![FstabEntry {
                        spec: "/dev/mapper/sys-root".into(),
                        file: "/".into(),
                        vfstype: "ext4".into(),
                        options: "errors=remount-ro".into(),
                        freq: 0,
                        passno: 1,
                    }],
                    ..Default::default()
                },
                network: crate::survey::Network {
                    interfaces: vec![Interface {
                        name: "ens3".into(),
                        kind: "ether".into(),
                        mac: Some("52:54:00:00:00:01".into()),
                        mtu: 1500,
                        addresses: vec!["192.0.2.10/24".into(), "fe80::1/64".into()],
                        ..Default::default()
                    }],
                    routes: vec![Route {
                        dst: "default".into(),
                        gateway: Some("192.0.2.1".into()),
                        dev: Some("ens3".into()),
                        protocol: Some("static".into()),
                        ..Default::default()
                    }],
                    dns: Dns {
                        nameservers: vec!["192.0.2.53".into()],
                        search: vec!["example.net".into()],
                    },
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        };
        let fs = |path: &str, bytes| FsImage {
            path: path.into(),
            snapshot: "ab".repeat(32),
            fstype: Some("ext4".into()),
            consistency: Consistency::LvmSnapshot,
            files: 10,
            bytes,
            added_bytes: bytes,
            root: RootMeta::default(),
            raw: false,
            fingerprint: None,
        };
        Manifest {
            version: MANIFEST_VERSION,
            image: "web1".into(),
            capture: "c1".into(),
            hostname: "web1".into(),
            started: String::new(),
            finished: String::new(),
            excludes: vec![],
            filesystems: vec![fs("/", 2 * GIB), fs("/boot", 80 * MIB)],
            warnings: vec![],
            survey: Some(Box::new(survey)),
            pending: vec![],
            abandoned: None,
        }
    }

    fn target(gib: u64, mode: BootMode) -> Survey {
        let mut t = Survey {
            disks: vec![Disk {
                name: "sda".into(),
                size_bytes: gib * GIB,
                ..Default::default()
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:aa:bb:cc".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        t.hardware.firmware.mode = mode;
        t
    }

    /// Onto a larger UEFI target: an ESP, /boot as before, the root's volume group
    /// taking the rest of the disk and the root the rest of the group; swap kept;
    /// the address on the new NIC under the old name.
    #[test]
    fn the_default_plan_keeps_the_layout_on_the_target() {
        let image = source();
        let plan = default_plan(&image, &target(40, BootMode::Uefi)).expect("plan");
        assert_eq!(plan.validate(&SourceFs::of(&image)), Vec::<String>::new());
        let disk = &plan.storage.disks[0];
        assert_eq!((disk.disk.as_str(), disk.table), ("sda", TableKind::Gpt));
        let roles: Vec<(&str, Option<u64>, PartRole)> = disk
            .partitions
            .iter()
            .map(|p| (p.name.as_str(), p.size_bytes, p.role))
            .collect();
        assert_eq!(
            roles,
            [
                ("esp", Some(512 * MIB), PartRole::Esp),
                ("boot", Some(512 * MIB), PartRole::Data),
                ("pv-sys", None, PartRole::Lvm),
            ]
        );
        let vg = &plan.storage.vgs[0];
        assert_eq!(vg.name, "sys");
        let lvs: Vec<(&str, Option<u64>)> = vg
            .lvs
            .iter()
            .map(|l| (l.name.as_str(), l.size_bytes))
            .collect();
        assert_eq!(lvs, [("root", None), ("swap", Some(GIB))]);
        let root = plan
            .storage
            .filesystems
            .iter()
            .find(|f| f.mount.as_deref() == Some("/"))
            .expect("root");
        assert_eq!(
            (
                root.device.as_str(),
                root.fstype.as_str(),
                root.options.as_deref()
            ),
            ("sys/root", "ext4", Some("errors=remount-ro"))
        );
        // The source's UUID is kept, so references to it outside fstab still hold.
        assert_eq!(
            root.uuid.as_deref(),
            Some("5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f50")
        );
        assert_eq!(plan.boot.mode, BootMode::Uefi);
        let nic = &plan.network.interfaces[0];
        assert_eq!(nic.name, "ens3");
        assert_eq!(
            nic.kind,
            IfaceKind::Ethernet {
                mac: "52:54:00:aa:bb:cc".into()
            }
        );
        assert_eq!(nic.addresses, ["192.0.2.10/24"]);
        assert_eq!(plan.network.routes[0].gateway.as_deref(), Some("192.0.2.1"));
        assert_eq!(plan.network.dns.nameservers, ["192.0.2.53"]);
        assert_eq!(plan.hostname, "web1");
    }

    /// Onto a BIOS target half the source's size: a BIOS boot partition, and the
    /// filesystems shrunk alike, still fitting; onto 2 GiB the root does not fit,
    /// and validation says so.
    #[test]
    fn the_default_plan_shrinks_to_a_smaller_target_or_is_refused() {
        let image = source();
        let plan = default_plan(&image, &target(5, BootMode::Bios)).expect("plan");
        assert_eq!(plan.validate(&SourceFs::of(&image)), Vec::<String>::new());
        assert_eq!(plan.storage.disks[0].partitions[0].role, PartRole::BiosBoot);
        let small = default_plan(&image, &target(2, BootMode::Bios)).expect("plan");
        let p = small.validate(&SourceFs::of(&image));
        assert!(p.iter().any(|x| x.contains("does not fit")), "{p:#?}");
    }

    #[test]
    fn a_default_plan_needs_the_sources_survey_and_a_disk() {
        let mut image = source();
        image.survey = None;
        let err = default_plan(&image, &target(40, BootMode::Bios)).expect_err("refused");
        assert!(err.contains("carries no survey"), "{err}");
        let mut t = target(40, BootMode::Bios);
        t.disks.clear();
        let err = default_plan(&source(), &t).expect_err("refused");
        assert!(err.contains("no disk"), "{err}");
    }

    /// A capture still running (a direct migration's) plans the same as when done:
    /// its pending filesystems count, and a plan for it validates.
    #[test]
    fn a_partial_manifest_plans_like_the_finished_one() {
        let image = source();
        let full = default_plan(&image, &target(40, BootMode::Uefi)).expect("plan");
        let mut partial = image.clone();
        partial.pending = partial
            .filesystems
            .drain(..)
            .map(|f| crate::image::PendingFs {
                path: f.path,
                fstype: f.fstype,
                raw: f.raw,
            })
            .collect();
        let early = default_plan(&partial, &target(40, BootMode::Uefi)).expect("plan");
        assert_eq!(early.storage, full.storage);
        assert_eq!(
            early.validate(&SourceFs::of(&partial)),
            Vec::<String>::new()
        );
        let mut small = early.clone();
        small.storage.disks[0].size_bytes = 1024 * MIB;
        assert!(!small.validate(&SourceFs::of(&partial)).is_empty());
    }
}
