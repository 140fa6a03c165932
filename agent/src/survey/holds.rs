//! What holds a disk: filesystems mounted from it or from a device stacked on it
//! (LVM, RAID, crypt), swap there, stacked devices that are active, and an exclusive
//! open no table shows (a filesystem unmounted lazily that something still uses).
//! The survey reports it for each disk; a deploy refuses to wipe a disk the ramdisk
//! still depends on.

use std::collections::BTreeSet;

use super::Host;
use super::storage::{mountinfo, swaps};

/// One block device on a disk: the disk, a partition, or a device stacked on them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dev {
    /// Kernel name (`vda2`, `dm-0`, `md127`).
    name: String,
    /// `major:minor`.
    number: String,
    /// How a person knows it: `dm-0 (sys-root)`, `md127`, `vda2`.
    shown: String,
    /// The device it is stacked on, for a stacked one.
    on: Option<String>,
}

/// What holds one disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    /// Uses of the disk by this system: mounts and swap.
    pub uses: Vec<String>,
    /// Devices stacked on it that are active (stopping them frees the disk).
    pub stacked: Vec<String>,
    /// The kernel refuses an exclusive open of the disk and nothing above says why.
    pub hidden: bool,
}

impl Holds {
    /// Whether nothing holds the disk.
    pub fn free(&self) -> bool {
        self.uses.is_empty() && self.stacked.is_empty() && !self.hidden
    }

    /// Each hold in words.
    pub fn describe(&self) -> Vec<String> {
        let mut all = self.uses.clone();
        all.extend(self.stacked.iter().cloned());
        if self.hidden {
            all.push(
                "the kernel has it open exclusively, though nothing mounts it (a filesystem unmounted lazily that a program still uses, or a program holding it)"
                    .into(),
            );
        }
        all
    }
}

/// The kernel's tables read once, for any number of disks.
pub struct Tables {
    mounts: Vec<super::storage::Mount>,
    swaps: Vec<ferry_model::survey::Swap>,
}

impl Tables {
    /// Mounts and swap of `host` as they are now.
    pub fn read(host: &Host) -> Tables {
        Tables {
            mounts: mountinfo(&host.read_raw("/proc/self/mountinfo").unwrap_or_default()),
            swaps: swaps(&host.read_raw("/proc/swaps").unwrap_or_default()),
        }
    }
}

/// What holds `disk` (a kernel name under /sys/block).
pub fn holds(host: &Host, tables: &Tables, disk: &str) -> Holds {
    let devs = devices(host, disk);
    let mut uses = Vec::new();
    for d in &devs {
        let points: Vec<&str> = tables
            .mounts
            .iter()
            .filter(|m| m.dev == d.number)
            .map(|m| m.point.as_str())
            .collect();
        if !points.is_empty() {
            uses.push(format!("{} is mounted at {}", d.shown, points.join(", ")));
        }
    }
    for s in &tables.swaps {
        // A swap area shows as the node it was opened by; /dev/mapper names are links.
        let name = host
            .link_name(&s.device)
            .or_else(|| s.device.rsplit('/').next().map(str::to_string))
            .unwrap_or_default();
        if let Some(d) = devs.iter().find(|d| d.name == name) {
            uses.push(format!("{} is in use as swap", d.shown));
        }
    }
    let stacked: Vec<String> = devs
        .iter()
        .filter_map(|d| {
            let on = d.on.as_ref()?;
            Some(format!("{} is active on {on}", d.shown))
        })
        .collect();
    let hidden = uses.is_empty() && stacked.is_empty() && busy(host, disk);
    Holds {
        uses,
        stacked,
        hidden,
    }
}

/// The disk, its partitions and everything stacked on them, each once.
fn devices(host: &Host, disk: &str) -> Vec<Dev> {
    let base = format!("/sys/block/{disk}");
    let mut found = vec![(disk.to_string(), base.clone(), None)];
    for part in host.list(&base) {
        if part.starts_with(disk) && host.exists(&format!("{base}/{part}/partition")) {
            found.push((part.clone(), format!("{base}/{part}"), None));
        }
    }
    let mut seen: BTreeSet<String> = found.iter().map(|(n, _, _)| n.clone()).collect();
    let mut i = 0;
    while let Some((name, dir, _)) = found.get(i).cloned() {
        for holder in host.list(&format!("{dir}/holders")) {
            if seen.insert(holder.clone()) {
                found.push((
                    holder.clone(),
                    format!("/sys/block/{holder}"),
                    Some(name.clone()),
                ));
            }
        }
        i += 1;
    }
    found
        .into_iter()
        .map(|(name, dir, on)| Dev {
            number: host.read(&format!("{dir}/dev")).unwrap_or_default(),
            shown: match host.read(&format!("{dir}/dm/name")) {
                Some(dm) => format!("{name} ({dm})"),
                None => name.clone(),
            },
            name,
            on,
        })
        .filter(|d| !d.number.is_empty())
        .collect()
}

/// Whether the kernel refuses to open `disk` exclusively: something has it, or one
/// of its partitions, mounted, stacked or open exclusively.
fn busy(host: &Host, disk: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_EXCL | nix::libc::O_NONBLOCK)
        .open(host.path(&format!("/dev/{disk}")))
        .is_err_and(|e| e.raw_os_error() == Some(nix::libc::EBUSY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::{host, put};

    /// vda: vda1 (/boot), vda2 (LVM: sys-root at /, sys-swap as swap); vdb: vdb1
    /// unused, with an array md127 on it.
    fn machine(root: &std::path::Path) -> Host {
        for (dir, dev) in [
            ("vda", "253:0"),
            ("vda/vda1", "253:1"),
            ("vda/vda2", "253:2"),
            ("vdb", "253:16"),
            ("vdb/vdb1", "253:17"),
        ] {
            put(root, &format!("/sys/block/{dir}/dev"), dev);
            if dir.contains('/') {
                put(root, &format!("/sys/block/{dir}/partition"), "1");
            }
        }
        for (path, text) in [
            ("vda/vda2/holders/dm-0", ""),
            ("vda/vda2/holders/dm-1", ""),
            ("dm-0/dev", "254:0"),
            ("dm-0/dm/name", "sys-root"),
            ("dm-1/dev", "254:1"),
            ("dm-1/dm/name", "sys-swap"),
            ("vdb/vdb1/holders/md127", ""),
            ("md127/dev", "9:127"),
        ] {
            put(root, &format!("/sys/block/{path}"), text);
        }
        put(
            root,
            "/proc/self/mountinfo",
            "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/mapper/sys-root rw\n\
             23 22 253:1 / /boot rw,relatime shared:2 - ext4 /dev/vda1 rw\n\
             24 22 0:5 / /dev rw - devtmpfs udev rw\n",
        );
        put(
            root,
            "/proc/swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
             /dev/dm-1                               partition\t1048572\t\t0\t\t-2\n",
        );
        host(root, &[])
    }

    #[test]
    fn mounts_swap_and_stacked_devices_hold_a_disk() {
        let dir = tempfile::tempdir().unwrap();
        let host = machine(dir.path());
        let tables = Tables::read(&host);
        let vda = holds(&host, &tables, "vda");
        assert_eq!(
            vda.uses,
            [
                "vda1 is mounted at /boot",
                "dm-0 (sys-root) is mounted at /",
                "dm-1 (sys-swap) is in use as swap"
            ]
        );
        assert_eq!(
            vda.stacked,
            [
                "dm-0 (sys-root) is active on vda2",
                "dm-1 (sys-swap) is active on vda2"
            ]
        );
        assert!(!vda.free());
        let vdb = holds(&host, &tables, "vdb");
        assert!(vdb.uses.is_empty(), "{vdb:?}");
        assert_eq!(vdb.describe(), ["md127 is active on vdb1"]);
    }

    #[test]
    fn a_disk_nothing_uses_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let host = machine(dir.path());
        put(dir.path(), "/sys/block/vdc/dev", "253:32");
        put(dir.path(), "/sys/block/vdc/vdc1/dev", "253:33");
        put(dir.path(), "/sys/block/vdc/vdc1/partition", "1");
        let h = holds(&host, &Tables::read(&host), "vdc");
        assert!(h.free(), "{h:?}");
        assert!(h.describe().is_empty());
    }

    #[test]
    fn a_hidden_hold_is_named() {
        let h = Holds {
            hidden: true,
            ..Holds::default()
        };
        assert!(!h.free());
        assert!(h.describe()[0].contains("unmounted lazily"), "{h:?}");
    }
}
