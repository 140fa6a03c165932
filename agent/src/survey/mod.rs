//! A short inventory of the machine, read straight from /proc and /sys.

use std::fs;
use std::path::Path;

use ferry_model::protocol::Fingerprint;
use ferry_model::survey::{Disk, Nic, Survey};

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Reads the machine's inventory; missing facts are left empty, never an error.
pub fn survey() -> Survey {
    Survey {
        hostname: read_trim("/proc/sys/kernel/hostname").unwrap_or_default(),
        kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: memory_bytes().unwrap_or(0),
        disks: disks(Path::new("/sys/block")),
        nics: nics(Path::new("/sys/class/net")),
    }
}

fn memory_bytes() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Whole disks under a `/sys/block`-like folder, skipping loop, ram and device-mapper nodes.
pub fn disks(sys_block: &Path) -> Vec<Disk> {
    let Ok(entries) = fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut out: Vec<Disk> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if ["loop", "ram", "dm-", "md", "zram", "sr"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                return None;
            }
            let dir = e.path();
            let sectors: u64 = read_trim(dir.join("size"))?.parse().ok()?;
            Some(Disk {
                name,
                size_bytes: sectors * 512,
                model: read_trim(dir.join("device/model")),
                serial: read_trim(dir.join("device/serial"))
                    .or_else(|| read_trim(dir.join("serial"))),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Network interfaces with a real hardware address under a `/sys/class/net`-like folder.
pub fn nics(sys_net: &Path) -> Vec<Nic> {
    let Ok(entries) = fs::read_dir(sys_net) else {
        return Vec::new();
    };
    let mut out: Vec<Nic> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let dir = e.path();
            let mac = read_trim(dir.join("address"))?;
            if name == "lo" || mac == "00:00:00:00:00:00" {
                return None;
            }
            let driver = fs::read_link(dir.join("device/driver"))
                .ok()
                .and_then(|p| p.file_name()?.to_str().map(str::to_string));
            Some(Nic {
                name,
                mac,
                driver,
                up: read_trim(dir.join("operstate")).as_deref() == Some("up"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Facts that identify the machine again after a reinstall.
pub fn fingerprint(survey: &Survey) -> Fingerprint {
    Fingerprint {
        system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
        macs: survey.nics.iter().map(|n| n.mac.clone()).collect(),
        disk_serials: survey
            .disks
            .iter()
            .filter_map(|d| d.serial.clone())
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_sysfs_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = dir.path().join("block");
        fs::create_dir_all(b.join("vda/device")).expect("mkdir");
        fs::write(b.join("vda/size"), "2097152\n").expect("write");
        fs::write(b.join("vda/device/serial"), "SER1\n").expect("write");
        fs::create_dir_all(b.join("loop0")).expect("mkdir");
        fs::write(b.join("loop0/size"), "8\n").expect("write");
        let d = disks(&b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].size_bytes, 1 << 30);
        assert_eq!(d[0].serial.as_deref(), Some("SER1"));

        let n = dir.path().join("net");
        for (name, mac, state) in [
            ("lo", "00:00:00:00:00:00", "unknown"),
            ("eth0", "52:54:00:12:34:56", "up"),
        ] {
            fs::create_dir_all(n.join(name)).expect("mkdir");
            fs::write(n.join(name).join("address"), mac).expect("write");
            fs::write(n.join(name).join("operstate"), state).expect("write");
        }
        let nics = nics(&n);
        assert_eq!(nics.len(), 1);
        assert!(nics[0].up);
        assert_eq!(nics[0].mac, "52:54:00:12:34:56");
    }
}
