//! The storage stack: partition tables, md RAID, LVM, filesystems, fstab, crypttab and
//! swap. Devices come from /sys/class/block; what is on them from `blkid -p -o export`
//! (which probes the devices itself, so it works without udev, as in the ramdisk);
//! LVM from `lvm … --reportformat json`; mounts from /proc/self/mountinfo.

use std::collections::HashMap;

use ferry_model::survey::{
    CrypttabEntry, Filesystem, FstabEntry, Lvm, LvmLv, LvmPv, LvmVg, MdArray, Partition,
    PartitionTable, Storage, Swap,
};
use serde_json::Value;

use super::{Gaps, Host};

/// The storage stack of `host`.
pub fn storage(host: &Host, gaps: &mut Gaps) -> Storage {
    let names: Vec<String> = host
        .list("/sys/class/block")
        .into_iter()
        .filter(|n| probed(host, n))
        .collect();
    let probes = if names.is_empty() {
        Vec::new()
    } else {
        let devs: Vec<String> = names.iter().map(|n| format!("/dev/{n}")).collect();
        let args: Vec<&str> = ["-p", "-o", "export"]
            .into_iter()
            .chain(devs.iter().map(String::as_str))
            .collect();
        match host.tool("blkid", &args) {
            Ok(text) => blkid_export(&text),
            Err(e) => {
                gaps.note("partitions and filesystems", e);
                Vec::new()
            }
        }
    };
    let sectors = |name: &str| -> u64 {
        host.read(&format!("/sys/class/block/{name}/size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    let mounts = match host.read_raw("/proc/self/mountinfo") {
        Ok(text) => mountinfo(&text),
        Err(e) => {
            gaps.note("mounts", format!("/proc/self/mountinfo: {e}"));
            Vec::new()
        }
    };
    let dev_numbers: HashMap<String, String> = names
        .iter()
        .filter_map(|n| Some((n.clone(), host.read(&format!("/sys/class/block/{n}/dev"))?)))
        .collect();
    let mut s = Storage {
        partition_tables: partition_tables(&probes),
        filesystems: filesystems(
            &probes,
            &mounts,
            &dev_numbers,
            &mapper_names(host, &names),
            &sectors,
        ),
        md_arrays: md_arrays(host, &probes),
        lvm: lvm(host, gaps),
        ..Default::default()
    };
    if host.root == std::path::Path::new("/") {
        for fs in &mut s.filesystems {
            if let Some(mp) = fs.mountpoints.first() {
                fs.used_bytes = used_bytes(mp);
            }
        }
    }
    match host.read_raw("/etc/fstab") {
        Ok(text) => s.fstab = fstab(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => gaps.note("fstab", format!("/etc/fstab: {e}")),
    }
    if let Ok(text) = host.read_raw("/etc/crypttab") {
        s.crypttab = crypttab(&text);
    }
    if let Ok(text) = host.read_raw("/proc/swaps") {
        s.swap = swaps(&text);
    }
    s
}

/// `/dev/mapper/<name>` for each device-mapper node (`dm-0` → `/dev/mapper/vg-lv`).
fn mapper_names(host: &Host, names: &[String]) -> HashMap<String, String> {
    names
        .iter()
        .filter(|n| n.starts_with("dm-"))
        .filter_map(|n| {
            let dm = host.read(&format!("/sys/class/block/{n}/dm/name"))?;
            Some((n.clone(), format!("/dev/mapper/{dm}")))
        })
        .collect()
}

/// Block devices worth probing: not RAM disks, not unbacked loop devices, not optical.
fn probed(host: &Host, name: &str) -> bool {
    if ["ram", "zram", "sr", "fd"]
        .iter()
        .any(|p| name.starts_with(p))
    {
        return false;
    }
    if name.starts_with("loop") {
        let parent = name.split('p').take(2).collect::<Vec<_>>().join("p");
        let base = if host.exists(&format!("/sys/class/block/{name}/partition")) {
            parent
        } else {
            name.to_string()
        };
        return host.exists(&format!("/sys/class/block/{base}/loop/backing_file"));
    }
    true
}

/// Parses `blkid -o export` output: one key/value map per device.
pub fn blkid_export(text: &str) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    let mut cur: HashMap<String, String> = HashMap::new();
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            cur.insert(k.to_string(), v.to_string());
        }
    }
    out
}

fn dev_name(p: &HashMap<String, String>) -> String {
    p.get("DEVNAME")
        .map(|d| d.trim_start_matches("/dev/").to_string())
        .unwrap_or_default()
}

/// Partition tables with their partitions, from the probes of disks and partitions.
pub fn partition_tables(probes: &[HashMap<String, String>]) -> Vec<PartitionTable> {
    let mut tables: Vec<PartitionTable> = probes
        .iter()
        .filter_map(|p| {
            Some(PartitionTable {
                disk: dev_name(p),
                kind: p.get("PTTYPE")?.clone(),
                id: p.get("PTUUID").cloned(),
                partitions: Vec::new(),
            })
        })
        .collect();
    for p in probes {
        let Some(number) = p.get("PART_ENTRY_NUMBER").and_then(|n| n.parse().ok()) else {
            continue;
        };
        let name = dev_name(p);
        // The partition's disk: the table whose disk name prefixes it (`vda` → `vda1`,
        // `nvme0n1` → `nvme0n1p1`), longest first.
        let Some(table) = tables
            .iter_mut()
            .filter(|t| name.starts_with(&t.disk) && name != t.disk)
            .max_by_key(|t| t.disk.len())
        else {
            continue;
        };
        let num = |k: &str| p.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        table.partitions.push(Partition {
            name,
            number,
            start_bytes: num("PART_ENTRY_OFFSET") * 512,
            size_bytes: num("PART_ENTRY_SIZE") * 512,
            type_id: p.get("PART_ENTRY_TYPE").cloned().unwrap_or_default(),
            label: p.get("PART_ENTRY_NAME").cloned(),
            uuid: p.get("PART_ENTRY_UUID").cloned(),
            flags: p.get("PART_ENTRY_FLAGS").cloned(),
        });
    }
    for t in &mut tables {
        t.partitions.sort_by_key(|p| p.number);
    }
    tables
}

/// One mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the device.
    pub dev: String,
    /// The directory of the filesystem mounted there (`/` unless a bind mount or a
    /// btrfs subvolume).
    pub root: String,
    /// Mount point.
    pub point: String,
    /// What was mounted, e.g. `/dev/vda2`, `tmpfs`.
    pub source: String,
    /// Per-mount options.
    pub options: String,
    /// Filesystem type.
    pub fstype: String,
}

/// Undoes the octal escapes of mountinfo paths (`\040` for a space).
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses /proc/self/mountinfo.
pub fn mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                dev: f.get(2)?.to_string(),
                root: unescape(f.get(3)?),
                point: unescape(f.get(4)?),
                source: unescape(f.get(sep + 2)?),
                options: f.get(5)?.to_string(),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// Filesystems (and swap areas) found by probing, with their mount points.
pub fn filesystems(
    probes: &[HashMap<String, String>],
    mounts: &[Mount],
    dev_numbers: &HashMap<String, String>,
    device_names: &HashMap<String, String>,
    sectors: &dyn Fn(&str) -> u64,
) -> Vec<Filesystem> {
    probes
        .iter()
        .filter(|p| {
            p.get("USAGE").map(String::as_str) == Some("filesystem")
                || p.get("TYPE").map(String::as_str) == Some("swap")
                || p.get("USAGE").map(String::as_str) == Some("crypto")
        })
        .map(|p| {
            let name = dev_name(p);
            let shown = device_names
                .get(&name)
                .cloned()
                .unwrap_or_else(|| format!("/dev/{name}"));
            let on: Vec<&Mount> = dev_numbers
                .get(&name)
                .map(|d| mounts.iter().filter(|m| &m.dev == d).collect())
                .unwrap_or_default();
            Filesystem {
                device: shown,
                fstype: p.get("TYPE").cloned().unwrap_or_default(),
                uuid: p.get("UUID").cloned(),
                label: p.get("LABEL").cloned(),
                size_bytes: sectors(&name) * 512,
                used_bytes: None,
                mountpoints: on.iter().map(|m| m.point.clone()).collect(),
                options: on.first().map(|m| m.options.clone()),
            }
        })
        .collect()
}

fn used_bytes(mountpoint: &str) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(mountpoint).ok()?;
    let frsize = st.fragment_size();
    Some((st.blocks() - st.blocks_free()) * frsize)
}

/// md arrays from sysfs; name and UUID from their members' superblocks.
pub fn md_arrays(host: &Host, probes: &[HashMap<String, String>]) -> Vec<MdArray> {
    host.list("/sys/block")
        .into_iter()
        .filter(|n| n.starts_with("md") && host.exists(&format!("/sys/block/{n}/md")))
        .map(|device| {
            let f = |file: &str| host.read(&format!("/sys/block/{device}/{file}"));
            let members = host.list(&format!("/sys/block/{device}/slaves"));
            let member_probe = probes.iter().find(|p| {
                members.contains(&dev_name(p))
                    && p.get("TYPE").map(String::as_str) == Some("linux_raid_member")
            });
            MdArray {
                name: member_probe.and_then(|p| p.get("LABEL").cloned()),
                uuid: member_probe.and_then(|p| p.get("UUID").cloned()),
                level: f("md/level").unwrap_or_default(),
                metadata: f("md/metadata_version"),
                raid_disks: f("md/raid_disks").and_then(|v| v.parse().ok()).unwrap_or(0),
                state: f("md/array_state").unwrap_or_default(),
                size_bytes: f("size").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) * 512,
                members,
                device,
            }
        })
        .collect()
}

const LVM_COMMON: [&str; 5] = ["--reportformat", "json", "--units", "b", "--nosuffix"];

fn lvm_report(host: &Host, what: &str, fields: &str) -> Result<Vec<Value>, String> {
    let mut args = vec![what, "-a", "-o", fields];
    if what != "lvs" {
        args.remove(1);
    }
    args.extend(LVM_COMMON);
    let text = host.tool("lvm", &args)?;
    lvm_rows(&text, &what[..2])
}

/// The rows of one `lvm … --reportformat json` report (`pv`, `vg` or `lv`).
pub fn lvm_rows(text: &str, kind: &str) -> Result<Vec<Value>, String> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| format!("lvm: its JSON report does not parse: {e}"))?;
    Ok(v["report"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r[kind].as_array().cloned().unwrap_or_default())
        .collect())
}

fn text(row: &Value, k: &str) -> String {
    row[k].as_str().unwrap_or("").trim().to_string()
}

fn bytes(row: &Value, k: &str) -> u64 {
    text(row, k).parse().unwrap_or(0)
}

fn opt(row: &Value, k: &str) -> Option<String> {
    Some(text(row, k)).filter(|s| !s.is_empty())
}

/// LVM physical volumes, volume groups and logical volumes.
pub fn lvm(host: &Host, gaps: &mut Gaps) -> Lvm {
    let pvs = lvm_report(host, "pvs", "pv_name,vg_name,pv_uuid,pv_size");
    let vgs = lvm_report(
        host,
        "vgs",
        "vg_name,vg_uuid,vg_size,vg_free,vg_extent_size",
    );
    let lvs = lvm_report(
        host,
        "lvs",
        "lv_name,vg_name,lv_uuid,lv_size,segtype,pool_lv,origin,lv_attr",
    );
    match (pvs, vgs, lvs) {
        (Ok(p), Ok(v), Ok(l)) => lvm_from_rows(&p, &v, &l),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            gaps.note("lvm", e);
            Lvm::default()
        }
    }
}

/// Builds the LVM view from report rows.
pub fn lvm_from_rows(pvs: &[Value], vgs: &[Value], lvs: &[Value]) -> Lvm {
    let mut out = Lvm {
        pvs: pvs
            .iter()
            .map(|r| LvmPv {
                device: text(r, "pv_name"),
                vg: text(r, "vg_name"),
                uuid: text(r, "pv_uuid"),
                size_bytes: bytes(r, "pv_size"),
            })
            .collect(),
        vgs: vgs
            .iter()
            .map(|r| LvmVg {
                name: text(r, "vg_name"),
                uuid: text(r, "vg_uuid"),
                size_bytes: bytes(r, "vg_size"),
                free_bytes: bytes(r, "vg_free"),
                extent_bytes: bytes(r, "vg_extent_size"),
            })
            .collect(),
        lvs: Vec::new(),
    };
    for r in lvs {
        let uuid = text(r, "lv_uuid");
        // One row per segment: keep the first.
        if out.lvs.iter().any(|l| l.uuid == uuid) {
            continue;
        }
        out.lvs.push(LvmLv {
            name: text(r, "lv_name").trim_matches(['[', ']']).to_string(),
            vg: text(r, "vg_name"),
            uuid,
            size_bytes: bytes(r, "lv_size"),
            segtype: text(r, "segtype"),
            pool: opt(r, "pool_lv"),
            origin: opt(r, "origin"),
            attr: text(r, "lv_attr"),
        });
    }
    out
}

fn fields(line: &str) -> Option<Vec<&str>> {
    let line = line.split('#').next().unwrap_or("").trim();
    (!line.is_empty()).then(|| line.split_whitespace().collect())
}

/// Parses fstab(5).
pub fn fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter_map(fields)
        .filter(|f| f.len() >= 3)
        .map(|f| FstabEntry {
            spec: unescape(f[0]),
            file: unescape(f[1]),
            vfstype: f[2].to_string(),
            options: f.get(3).unwrap_or(&"defaults").to_string(),
            freq: f.get(4).and_then(|v| v.parse().ok()).unwrap_or(0),
            passno: f.get(5).and_then(|v| v.parse().ok()).unwrap_or(0),
        })
        .collect()
}

/// Parses crypttab(5).
pub fn crypttab(text: &str) -> Vec<CrypttabEntry> {
    text.lines()
        .filter_map(fields)
        .filter(|f| f.len() >= 2)
        .map(|f| CrypttabEntry {
            name: f[0].to_string(),
            device: f[1].to_string(),
            key: f.get(2).unwrap_or(&"none").to_string(),
            options: f.get(3).unwrap_or(&"").to_string(),
        })
        .collect()
}

/// Parses /proc/swaps (sizes there are KiB).
pub fn swaps(text: &str) -> Vec<Swap> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Swap {
                device: unescape(f.first()?),
                kind: f.get(1)?.to_string(),
                size_bytes: f.get(2)?.parse::<u64>().ok()? * 1024,
                priority: f.get(4)?.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::fixture;

    #[test]
    fn gpt_and_mbr_tables_from_blkid() {
        let probes = blkid_export(&fixture("blkid-gpt.txt"));
        let t = partition_tables(&probes);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!((t[0].disk.as_str(), t[0].kind.as_str()), ("loop0", "gpt"));
        let p: Vec<(&str, u32, u64)> = t[0]
            .partitions
            .iter()
            .map(|p| (p.label.as_deref().unwrap_or(""), p.number, p.start_bytes))
            .collect();
        assert_eq!(
            p,
            [
                ("esp", 1, 2048 * 512),
                ("root", 2, 43008 * 512),
                ("data", 3, 206848 * 512)
            ]
        );
        assert_eq!(
            t[0].partitions[0].type_id,
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(t[0].partitions[0].flags.as_deref(), Some("0x1"));
        assert_eq!(t[0].partitions[1].size_bytes, 80 << 20);

        let t = partition_tables(&blkid_export(&fixture("blkid-mbr.txt")));
        assert_eq!(
            (t[0].kind.as_str(), t[0].id.as_deref()),
            ("dos", Some("1234abcd"))
        );
        assert_eq!(t[0].partitions[0].type_id, "0x83");
        assert_eq!(
            t[0].partitions[0].flags.as_deref(),
            Some("0x80"),
            "bootable"
        );
        assert_eq!(t[0].partitions[1].type_id, "0x82");
    }

    #[test]
    fn filesystems_with_their_mounts() {
        let probes = blkid_export(&fixture("blkid-gpt.txt"));
        let mounts = mountinfo(&fixture("mountinfo.txt"));
        assert!(mounts.iter().any(|m| m.point == "/"), "{mounts:?}");
        let numbers: HashMap<String, String> =
            [("loop0p2".to_string(), "259:1".to_string())].into();
        let fs = filesystems(&probes, &mounts, &numbers, &HashMap::new(), &|_| 2048);
        let got: Vec<(&str, &str, Option<&str>)> = fs
            .iter()
            .map(|f| (f.device.as_str(), f.fstype.as_str(), f.label.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("/dev/loop0p1", "vfat", Some("ESP")),
                ("/dev/loop0p2", "ext4", Some("root")),
                ("/dev/loop0p3", "xfs", Some("data"))
            ]
        );
        assert_eq!(fs[1].mountpoints, ["/mnt/fx"]);
        assert!(fs[1].options.as_deref().unwrap().contains("noatime"));
        assert_eq!(
            fs[1].uuid.as_deref(),
            Some("0b7a4c52-1d1e-4a8e-9d3c-1f2e3d4c5b6a")
        );
        assert!(fs[0].mountpoints.is_empty());
        // Swap counts as well.
        let fs = filesystems(
            &blkid_export(&fixture("blkid-mbr.txt")),
            &[],
            &HashMap::new(),
            &HashMap::new(),
            &|_| 1,
        );
        assert_eq!(
            fs.iter().map(|f| f.fstype.as_str()).collect::<Vec<_>>(),
            ["ext4", "swap"]
        );
    }

    #[test]
    fn fstab_crypttab_and_swaps() {
        let f = fstab(&fixture("fstab.txt"));
        assert_eq!(f.len(), 6, "{f:?}");
        assert_eq!(
            (f[0].spec.as_str(), f[0].file.as_str(), f[0].passno),
            ("/dev/mapper/vg0-root", "/", 1)
        );
        assert_eq!(f[2].options, "defaults,noatime");
        assert_eq!((f[5].options.as_str(), f[5].passno), ("defaults", 0));
        let c =
            crypttab("# <target> <source> <key> <options>\ncryptroot UUID=abc none luks,discard\n");
        assert_eq!(
            (c[0].name.as_str(), c[0].options.as_str()),
            ("cryptroot", "luks,discard")
        );
        let s = swaps(&fixture("swaps.txt"));
        assert_eq!(s.len(), 1);
        assert_eq!(
            (
                s[0].device.as_str(),
                s[0].kind.as_str(),
                s[0].size_bytes,
                s[0].priority
            ),
            ("/dev/loop1p2", "partition", 31740 * 1024, -2)
        );
    }

    #[test]
    fn lvm_reports_with_thin_volumes_and_snapshots() {
        let rows = |name: &str, kind: &str| lvm_rows(&fixture(name), kind).unwrap();
        let l = lvm_from_rows(
            &rows("lvm-pvs.json", "pv"),
            &rows("lvm-vgs.json", "vg"),
            &rows("lvm-lvs.json", "lv"),
        );
        assert_eq!(l.pvs.len(), 1, "{l:?}");
        assert_eq!(l.pvs[0].vg, "vg0");
        assert_eq!(l.vgs[0].extent_bytes, 4 << 20);
        let by_name = |n: &str| {
            l.lvs
                .iter()
                .find(|v| v.name == n)
                .unwrap_or_else(|| panic!("{n} in {l:?}"))
        };
        assert_eq!(by_name("root").segtype, "linear");
        assert_eq!(by_name("pool").segtype, "thin-pool");
        assert_eq!(by_name("thin1").pool.as_deref(), Some("pool"));
        assert_eq!(by_name("snap").origin.as_deref(), Some("root"));
        assert!(
            lvm_rows("not json", "lv")
                .unwrap_err()
                .contains("does not parse")
        );
    }
}
