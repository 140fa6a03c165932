//! A target's storage laid out from a deploy plan: old signatures wiped, partition
//! tables, RAID arrays, LVM groups and volumes, filesystems, mounts. Every system
//! tool goes through the host's one runner, whose errors carry the command line and
//! the tool's stderr; each step can run again from the start of the layout.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ferry_model::deploy::{FsLayout, PartRole, StorageLayout, TableKind};

use super::tool;
use crate::survey::{Host, holds};

const MIB: u64 = 1 << 20;

/// `/dev/NAME` of partition `n` of `disk` (`vda1`, `nvme0n1p1`).
pub fn partition_dev(disk: &str, n: usize) -> String {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    format!("/dev/{disk}{sep}{n}")
}

/// The device node of the plan's block device `name`: a partition, an array
/// (`/dev/md/NAME`) or a logical volume (`VG/LV` → `/dev/VG/LV`).
pub fn device_of(storage: &StorageLayout, name: &str) -> Option<String> {
    for disk in &storage.disks {
        if let Some(i) = disk.partitions.iter().position(|p| p.name == name) {
            return Some(partition_dev(&disk.disk, i + 1));
        }
    }
    if storage.md.iter().any(|m| m.name == name) {
        return Some(format!("/dev/md/{name}"));
    }
    let (vg, lv) = name.split_once('/')?;
    storage
        .vgs
        .iter()
        .any(|g| g.name == vg && g.lvs.iter().any(|l| l.name == lv))
        .then(|| format!("/dev/{vg}/{lv}"))
}

/// The device nodes of `names`, which `owner` is made of.
fn devices_of(storage: &StorageLayout, names: &[String], owner: &str) -> Result<Vec<String>> {
    names
        .iter()
        .map(|n| device_of(storage, n).ok_or_else(|| anyhow!("{owner}: no device named {n}")))
        .collect()
}

/// Checks every planned disk is on this machine with the planned size and identity
/// (WWN or serial), before any of them is touched.
pub fn check_disks(host: &Host, storage: &StorageLayout) -> Result<()> {
    let present = crate::survey::hw::disks(host);
    for disk in &storage.disks {
        let Some(found) = present.iter().find(|d| d.name == disk.disk) else {
            bail!("disk {}: not found on this machine", disk.disk);
        };
        if found.size_bytes != disk.size_bytes {
            bail!(
                "disk {}: it has {} bytes, the plan was made for {} bytes; is it the right disk? Plan again for this machine",
                disk.disk,
                found.size_bytes,
                disk.size_bytes
            );
        }
        if let Some(id) = &disk.id
            && found.wwn.as_ref() != Some(id)
            && found.serial.as_ref() != Some(id)
        {
            bail!(
                "disk {}: its WWN/serial is {}, the plan was made for {id}; kernel names can move between boots: plan again for this machine",
                disk.disk,
                found
                    .wwn
                    .as_ref()
                    .or(found.serial.as_ref())
                    .map_or("none", |s| s.as_str())
            );
        }
    }
    Ok(())
}

/// Checks nothing of this system still depends on a planned disk, before any is
/// touched: no filesystem mounted from it, no swap on it, and — once the volume
/// groups and arrays on it are stopped — nothing holding it open. A ramdisk entered
/// from the server's own disk must have let go of it; a refusal names the holds.
pub fn check_free(host: &Host, storage: &StorageLayout) -> Result<()> {
    // `stopped`: after the stacked devices were stopped, when any hold refuses.
    let look = |stopped: bool| -> Result<bool> {
        let tables = holds::Tables::read(host);
        let mut stacked = false;
        for disk in &storage.disks {
            let h = holds::holds(host, &tables, &disk.disk);
            if !h.uses.is_empty() || h.hidden || (stopped && !h.stacked.is_empty()) {
                bail!(
                    "disk {}: this system still uses it{} — {}; nothing was wiped. Unmount it or turn its swap off (or deploy from a ramdisk that did not start from it), or plan another disk",
                    disk.disk,
                    if stopped {
                        " after its volume groups and arrays were stopped"
                    } else {
                        ""
                    },
                    h.describe().join("; ")
                );
            }
            stacked |= !h.stacked.is_empty();
        }
        Ok(stacked)
    };
    if look(false)? {
        // Nothing else of the ramdisk uses LVM or RAID.
        let _ = tool(host, "vgchange", &["-an"]);
        let _ = tool(host, "mdadm", &["--stop", "--scan"]);
        look(true)?;
    }
    Ok(())
}

/// Stops what holds the planned disks (volume groups, arrays), then wipes every
/// signature on them and on their old partitions, and their partition tables. Run
/// [`check_disks`] first.
pub fn wipe(host: &Host, storage: &StorageLayout) -> Result<()> {
    // Nothing else of the ramdisk uses LVM or RAID: stopping all of it frees the
    // disks without touching other disks' data.
    let _ = tool(host, "vgchange", &["-an"]);
    let _ = tool(host, "mdadm", &["--stop", "--scan"]);
    for disk in &storage.disks {
        let dev = format!("/dev/{}", disk.disk);
        for part in host
            .list(&format!("/sys/block/{}", disk.disk))
            .into_iter()
            .filter(|p| p.starts_with(&disk.disk))
        {
            tool(host, "wipefs", &["-a", &format!("/dev/{part}")])
                .with_context(|| format!("wiping old partition {part}"))?;
        }
        tool(host, "wipefs", &["-a", &dev])
            .with_context(|| format!("wiping disk {}", disk.disk))?;
        tool(host, "sgdisk", &["--zap-all", &dev])
            .with_context(|| format!("removing the partition tables of disk {}", disk.disk))?;
    }
    Ok(())
}

/// The GPT type code of a partition (sgdisk's short codes).
fn gpt_type(role: PartRole, swap: bool) -> &'static str {
    match role {
        PartRole::BiosBoot => "EF02",
        PartRole::Esp => "EF00",
        PartRole::Raid => "FD00",
        PartRole::Lvm => "8E00",
        PartRole::Data if swap => "8200",
        PartRole::Data => "8300",
    }
}

/// The MBR type of a partition.
fn mbr_type(role: PartRole, swap: bool) -> &'static str {
    match role {
        PartRole::Esp => "ef",
        PartRole::Raid => "fd",
        PartRole::Lvm => "8e",
        PartRole::Data if swap => "82",
        PartRole::BiosBoot | PartRole::Data => "83",
    }
}

/// Writes each planned disk's partition table, then clears any old signature the
/// new partitions start on and waits for their device nodes.
pub fn partition(host: &Host, storage: &StorageLayout) -> Result<()> {
    let is_swap = |name: &str| {
        storage
            .filesystems
            .iter()
            .any(|f| f.device == name && f.fstype == "swap")
    };
    for disk in &storage.disks {
        let dev = format!("/dev/{}", disk.disk);
        match disk.table {
            TableKind::Gpt => {
                let mut args = Vec::new();
                for (i, p) in disk.partitions.iter().enumerate() {
                    let n = i + 1;
                    let end = p
                        .size_bytes
                        .map_or_else(|| "0".to_string(), |s| format!("+{}M", s / MIB));
                    args.push(format!("--new={n}:0:{end}"));
                    args.push(format!(
                        "--typecode={n}:{}",
                        gpt_type(p.role, is_swap(&p.name))
                    ));
                    args.push(format!("--change-name={n}:{}", p.name));
                }
                args.push(dev.clone());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                tool(host, "sgdisk", &args)
                    .with_context(|| format!("partitioning disk {}", disk.disk))?;
            }
            TableKind::Mbr => {
                // sfdisk reads its script from stdin: from a file, by the shell.
                let mut script = String::from("label: dos\n");
                for (i, p) in disk.partitions.iter().enumerate() {
                    let size = p
                        .size_bytes
                        .map_or_else(String::new, |s| format!("size={}MiB, ", s / MIB));
                    // The first data partition is marked active, for BIOSes that
                    // look for one.
                    let boot = if i == 0 { ", bootable" } else { "" };
                    script.push_str(&format!(
                        "{size}type={}{boot}\n",
                        mbr_type(p.role, is_swap(&p.name))
                    ));
                }
                let file = format!("/tmp/ferry-sfdisk-{}", disk.disk);
                std::fs::write(host.path(&file), &script)
                    .with_context(|| format!("writing {file}"))?;
                tool(
                    host,
                    "sh",
                    &[
                        "-c",
                        &format!("sfdisk --wipe always --wipe-partitions always {dev} < {file}"),
                    ],
                )
                .with_context(|| format!("partitioning disk {}", disk.disk))?;
            }
        }
        // The kernel learns the new table (sgdisk and sfdisk ask it too).
        let _ = tool(host, "partx", &["-u", &dev]);
        for i in 1..=disk.partitions.len() {
            let part = partition_dev(&disk.disk, i);
            wait_for(host, &part)?;
            tool(host, "wipefs", &["-a", &part])
                .with_context(|| format!("clearing old signatures on {part}"))?;
        }
    }
    Ok(())
}

/// Waits up to 10 s for device node `dev` to appear.
fn wait_for(host: &Host, dev: &str) -> Result<()> {
    let start = Instant::now();
    while !host.exists(dev) {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{dev}: the device did not appear within 10 s of partitioning");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Creates the planned RAID arrays (metadata 1.2, so GRUB and every initramfs
/// read them), named `/dev/md/NAME`.
pub fn raid(host: &Host, storage: &StorageLayout) -> Result<()> {
    for md in &storage.md {
        let members = devices_of(storage, &md.members, &format!("array {}", md.name))?;
        let dev = format!("/dev/md/{}", md.name);
        let level = format!("--level={}", md.level);
        let count = format!("--raid-devices={}", members.len());
        let name = format!("--name={}", md.name);
        let mut args = vec![
            "--create",
            dev.as_str(),
            "--run",
            "--metadata=1.2",
            "--homehost=any",
            name.as_str(),
            level.as_str(),
            count.as_str(),
        ];
        args.extend(members.iter().map(String::as_str));
        tool(host, "mdadm", &args).with_context(|| format!("creating array {}", md.name))?;
        wait_for(host, &dev)?;
    }
    Ok(())
}

/// Creates the planned volume groups and their volumes; a volume without a size
/// takes what is left (made last).
pub fn lvm(host: &Host, storage: &StorageLayout) -> Result<()> {
    for vg in &storage.vgs {
        let pvs = devices_of(storage, &vg.pvs, &format!("volume group {}", vg.name))?;
        for pv in &pvs {
            tool(host, "pvcreate", &["-ff", "-y", pv])
                .with_context(|| format!("making {pv} a physical volume"))?;
        }
        let mut args = vec![vg.name.as_str()];
        args.extend(pvs.iter().map(String::as_str));
        tool(host, "vgcreate", &args)
            .with_context(|| format!("creating volume group {}", vg.name))?;
        let mut lvs: Vec<_> = vg.lvs.iter().collect();
        lvs.sort_by_key(|l| l.size_bytes.is_none());
        for lv in lvs {
            let size = match lv.size_bytes {
                Some(s) => format!("--size={}m", s / MIB),
                None => "--extents=100%FREE".to_string(),
            };
            let name = format!("--name={}", lv.name);
            tool(
                host,
                "lvcreate",
                &["--yes", "--wipesignatures=y", &name, &size, &vg.name],
            )
            .with_context(|| format!("creating volume {}/{}", vg.name, lv.name))?;
        }
    }
    Ok(())
}

/// A filesystem made: its plan entry, device node and UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// The plan's filesystem.
    pub fs: FsLayout,
    /// Its device node.
    pub dev: String,
    /// Its UUID, for fstab.
    pub uuid: String,
}

/// Makes every planned filesystem and swap area; what was made, with UUIDs.
pub fn make_filesystems(host: &Host, storage: &StorageLayout) -> Result<Vec<Made>> {
    let mut made = Vec::new();
    for fs in &storage.filesystems {
        let dev = device_of(storage, &fs.device)
            .ok_or_else(|| anyhow!("filesystem on {}: no such device", fs.device))?;
        // Each maker: its program, the options that overwrite and quiet it, and its
        // label and UUID options.
        let (mkfs, force, label_opt, uuid_opt): (&str, &[&str], &str, &str) =
            match fs.fstype.as_str() {
                "ext4" => ("mkfs.ext4", &["-F", "-q"], "-L", "-U"),
                "xfs" => ("mkfs.xfs", &["-f", "-q"], "-L", "-m"),
                "vfat" => ("mkfs.vfat", &["-F", "32"], "-n", "-i"),
                "btrfs" => ("mkfs.btrfs", &["-f", "-q"], "-L", "-U"),
                "swap" => ("mkswap", &[], "-L", "-U"),
                other => bail!("filesystem on {}: cannot make {other}", fs.device),
            };
        // xfs takes `uuid=U`; vfat's volume id is the UUID's 8 hex digits.
        let uuid = fs.uuid.as_deref().map(|u| match fs.fstype.as_str() {
            "xfs" => format!("uuid={u}"),
            "vfat" => u.replace('-', ""),
            _ => u.to_string(),
        });
        let mut args: Vec<&str> = force.to_vec();
        args.extend(fs.label.iter().flat_map(|l| [label_opt, l.as_str()]));
        args.extend(uuid.iter().flat_map(|u| [uuid_opt, u.as_str()]));
        args.push(&dev);
        tool(host, mkfs, &args)
            .with_context(|| format!("making {} on {}", fs.fstype, fs.device))?;
        // Probed on the device, not from blkid's cache.
        let uuid = tool(host, "blkid", &["-p", "-o", "value", "-s", "UUID", &dev])
            .with_context(|| format!("reading the UUID of {dev}"))?
            .trim()
            .to_string();
        if uuid.is_empty() {
            bail!("{dev}: the new {} has no UUID", fs.fstype);
        }
        // Without udev nothing makes /dev/disk/by-uuid; GRUB's menu generator names
        // the root by UUID only when that link exists.
        let link = format!("/dev/disk/by-uuid/{uuid}");
        let _ = std::fs::create_dir_all(host.path("/dev/disk/by-uuid"));
        let _ = std::fs::remove_file(host.path(&link));
        std::os::unix::fs::symlink(&dev, host.path(&link))
            .with_context(|| format!("linking {link}"))?;
        made.push(Made {
            fs: fs.clone(),
            dev,
            uuid,
        });
    }
    Ok(made)
}

/// The filesystems with mount points, shallowest first: the order to mount (and
/// restore) them in; unmount in reverse.
pub fn mount_order(made: &[Made]) -> Vec<&Made> {
    let mut with: Vec<&Made> = made.iter().filter(|m| m.fs.mount.is_some()).collect();
    with.sort_by_key(|m| {
        let mount = m.fs.mount.as_deref().unwrap_or("/").trim_end_matches('/');
        (mount.matches('/').count(), mount.to_string())
    });
    with
}

/// Mounts of the target's filesystems under one folder; unmounted, deepest first,
/// when dropped (retried once, then lazily), unless already unmounted.
pub struct Mounts<'h> {
    host: &'h Host,
    base: PathBuf,
    points: Vec<String>,
}

impl<'h> Mounts<'h> {
    /// No mounts yet, under `base` (e.g. `/mnt/ferry-target`).
    pub fn new(host: &'h Host, base: impl Into<PathBuf>) -> Mounts<'h> {
        Mounts {
            host,
            base: base.into(),
            points: Vec::new(),
        }
    }

    /// Where `mount` (a mount point of the migrated system) is now.
    pub fn at(&self, mount: &str) -> PathBuf {
        match mount.trim_matches('/') {
            "" => self.base.clone(),
            below => self.base.join(below),
        }
    }

    /// Mounts filesystem `m` at its place under the base, creating the folder.
    pub fn mount(&mut self, m: &Made) -> Result<PathBuf> {
        let mount =
            m.fs.mount
                .as_deref()
                .ok_or_else(|| anyhow!("{}: swap is not mounted", m.dev))?;
        let at = self.at(mount);
        let shown = at.to_string_lossy().to_string();
        std::fs::create_dir_all(self.host.path(&shown))
            .with_context(|| format!("creating mount point {shown}"))?;
        tool(self.host, "mount", &["-t", &m.fs.fstype, &m.dev, &shown])
            .with_context(|| format!("mounting {} at {shown}", m.dev))?;
        self.points.push(shown);
        Ok(at)
    }

    /// Binds the ramdisk's `/dev`, `/proc`, `/sys` and `/run` into the target, for
    /// tools run in a chroot of it.
    pub fn bind_system(&mut self) -> Result<()> {
        for (what, fstype) in [
            ("/dev", None),
            ("/proc", Some("proc")),
            ("/sys", Some("sysfs")),
            ("/run", None),
        ] {
            let at = self.at(what).to_string_lossy().to_string();
            std::fs::create_dir_all(self.host.path(&at))
                .with_context(|| format!("creating {at}"))?;
            match fstype {
                Some(t) => tool(self.host, "mount", &["-t", t, t, &at]),
                None => tool(self.host, "mount", &["--bind", what, &at]),
            }
            .with_context(|| format!("mounting {what} at {at}"))?;
            self.points.push(at);
        }
        Ok(())
    }

    /// Unmounts everything, deepest first; the first failure, after trying all.
    pub fn unmount(&mut self) -> Result<()> {
        let mut first = None;
        while let Some(point) = self.points.pop() {
            let tried = tool(self.host, "umount", &[&point])
                .or_else(|_| {
                    std::thread::sleep(Duration::from_millis(500));
                    tool(self.host, "umount", &[&point])
                })
                .with_context(|| format!("unmounting {point}"));
            if let Err(e) = tried {
                let _ = tool(self.host, "umount", &["-l", &point]);
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The base folder.
    pub fn base(&self) -> &Path {
        &self.base
    }
}

impl Drop for Mounts<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("{e:#}");
        }
    }
}

/// Wipes the new partition tables of the planned disks, so a half-written disk never
/// boots; what could not be wiped is named.
pub fn wipe_after_failure(host: &Host, storage: &StorageLayout) -> Result<()> {
    let _ = tool(host, "vgchange", &["-an"]);
    let _ = tool(host, "mdadm", &["--stop", "--scan"]);
    let mut failed = Vec::new();
    for disk in &storage.disks {
        let dev = format!("/dev/{}", disk.disk);
        if tool(host, "wipefs", &["-a", &dev]).is_err()
            || tool(host, "sgdisk", &["--zap-all", &dev]).is_err()
        {
            failed.push(disk.disk.clone());
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "could not wipe the partition tables of {}: wipe them before booting from them",
            failed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::deploy::examples::{fs, part, plan};
    use ferry_model::deploy::{DiskLayout, LvLayout, MdLayout, VgLayout};
    use std::sync::{Arc, Mutex};

    const GIB: u64 = 1 << 30;

    /// A fake machine under `dir` with `disks` (name, bytes), whose tools are
    /// recorded; partitioning and array creation make their device nodes.
    fn machine(dir: &Path, disks: &[(&str, u64)]) -> (Host, Arc<Mutex<Vec<String>>>) {
        for (d, size) in disks {
            std::fs::create_dir_all(dir.join(format!("sys/block/{d}/{d}9"))).expect("sys");
            std::fs::write(
                dir.join(format!("sys/block/{d}/size")),
                format!("{}\n", size / 512),
            )
            .expect("size");
            std::fs::create_dir_all(dir.join("dev/md")).expect("dev");
            std::fs::write(dir.join(format!("dev/{d}")), "").expect("node");
        }
        std::fs::create_dir_all(dir.join("tmp")).expect("tmp");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (root, calls) = (dir.to_path_buf(), log.clone());
        let host = Host::new(
            dir,
            Box::new(move |name: &str, args: &[&str]| {
                let line = format!("{name} {}", args.join(" "));
                calls.lock().expect("log").push(line.clone());
                let node = |dev: &str| std::fs::write(root.join(dev.trim_start_matches('/')), "");
                let last = args.last().copied().unwrap_or("");
                match name {
                    "sgdisk" if args.iter().any(|a| a.starts_with("--new=")) => {
                        let n = args.iter().filter(|a| a.starts_with("--new=")).count();
                        for i in 1..=n {
                            node(&partition_dev(last.trim_start_matches("/dev/"), i))
                                .expect("node");
                        }
                    }
                    "sh" => {
                        // sfdisk: two partitions in the MBR test.
                        for i in 1..=2 {
                            node(&partition_dev("sda", i)).expect("node");
                        }
                    }
                    "mdadm" if args.first() == Some(&"--create") => node(args[1]).expect("node"),
                    "blkid" => {
                        let dev = last.trim_start_matches("/dev/").replace('/', "-");
                        return Ok(format!("uuid-of-{dev}\n"));
                    }
                    _ => {}
                }
                Ok(String::new())
            }),
        );
        (host, log)
    }

    /// Runs every storage step of `storage` on a fake machine; the commands run.
    fn commands(storage: &StorageLayout, disks: &[(&str, u64)]) -> Vec<String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (host, log) = machine(dir.path(), disks);
        check_disks(&host, storage).expect("the planned disks");
        check_free(&host, storage).expect("nothing holds the disks");
        wipe(&host, storage).expect("wipe");
        partition(&host, storage).expect("partition");
        raid(&host, storage).expect("raid");
        lvm(&host, storage).expect("lvm");
        let made = make_filesystems(&host, storage).expect("mkfs");
        {
            let mut mounts = Mounts::new(&host, "/mnt/t");
            for m in mount_order(&made) {
                mounts.mount(m).expect("mount");
            }
            mounts.bind_system().expect("bind");
        }
        log.lock().expect("log").clone()
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// BIOS on GPT: a BIOS boot partition, swap and a root taking the rest.
    #[test]
    fn a_plain_gpt_layout_runs_exactly_these_commands() {
        let mut storage = plan().storage;
        storage.disks[0].partitions = vec![
            part("biosboot", Some(1), PartRole::BiosBoot),
            part("swap", Some(1024), PartRole::Data),
            part("root", None, PartRole::Data),
        ];
        storage.vgs.clear();
        storage.filesystems = vec![
            fs("swap", "swap", None, None),
            FsLayout {
                label: Some("root".into()),
                uuid: Some("5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f50".into()),
                ..fs("root", "ext4", Some("/"), Some("/"))
            },
        ];
        assert_eq!(
            commands(&storage, &[("vda", 20 * GIB)]),
            lines(
                "vgchange -an
                 mdadm --stop --scan
                 wipefs -a /dev/vda9
                 wipefs -a /dev/vda
                 sgdisk --zap-all /dev/vda
                 sgdisk --new=1:0:+1M --typecode=1:EF02 --change-name=1:biosboot --new=2:0:+1024M --typecode=2:8200 --change-name=2:swap --new=3:0:0 --typecode=3:8300 --change-name=3:root /dev/vda
                 partx -u /dev/vda
                 wipefs -a /dev/vda1
                 wipefs -a /dev/vda2
                 wipefs -a /dev/vda3
                 mkswap /dev/vda2
                 blkid -p -o value -s UUID /dev/vda2
                 mkfs.ext4 -F -q -L root -U 5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f50 /dev/vda3
                 blkid -p -o value -s UUID /dev/vda3
                 mount -t ext4 /dev/vda3 /mnt/t
                 mount --bind /dev /mnt/t/dev
                 mount -t proc proc /mnt/t/proc
                 mount -t sysfs sysfs /mnt/t/sys
                 mount --bind /run /mnt/t/run
                 umount /mnt/t/run
                 umount /mnt/t/sys
                 umount /mnt/t/proc
                 umount /mnt/t/dev
                 umount /mnt/t"
            )
        );
    }

    /// UEFI: an ESP, /boot, and LVM with the root taking what is left of the group;
    /// mounts shallowest first.
    #[test]
    fn a_uefi_lvm_layout_runs_exactly_these_commands() {
        let mut storage = plan().storage;
        storage.disks[0].disk = "nvme0n1".into();
        storage.disks[0].partitions[0] = part("esp", Some(512), PartRole::Esp);
        storage.filesystems.push(FsLayout {
            label: Some("EFI".into()),
            ..fs("esp", "vfat", Some("/boot/efi"), None)
        });
        let got = commands(&storage, &[("nvme0n1", 20 * GIB)]);
        let from = got
            .iter()
            .position(|c| c.starts_with("sgdisk --new"))
            .expect("sgdisk");
        let to = got
            .iter()
            .position(|c| c.starts_with("mount --bind"))
            .expect("bind");
        assert_eq!(
            got[from..to].to_vec(),
            lines(
                "sgdisk --new=1:0:+512M --typecode=1:EF00 --change-name=1:esp --new=2:0:+512M --typecode=2:8300 --change-name=2:boot --new=3:0:0 --typecode=3:8E00 --change-name=3:pv /dev/nvme0n1
                 partx -u /dev/nvme0n1
                 wipefs -a /dev/nvme0n1p1
                 wipefs -a /dev/nvme0n1p2
                 wipefs -a /dev/nvme0n1p3
                 pvcreate -ff -y /dev/nvme0n1p3
                 vgcreate sys /dev/nvme0n1p3
                 lvcreate --yes --wipesignatures=y --name=swap --size=1024m sys
                 lvcreate --yes --wipesignatures=y --name=root --extents=100%FREE sys
                 mkfs.ext4 -F -q /dev/nvme0n1p2
                 blkid -p -o value -s UUID /dev/nvme0n1p2
                 mkfs.xfs -f -q /dev/sys/root
                 blkid -p -o value -s UUID /dev/sys/root
                 mkswap /dev/sys/swap
                 blkid -p -o value -s UUID /dev/sys/swap
                 mkfs.vfat -F 32 -n EFI /dev/nvme0n1p1
                 blkid -p -o value -s UUID /dev/nvme0n1p1
                 mount -t xfs /dev/sys/root /mnt/t
                 mount -t ext4 /dev/nvme0n1p2 /mnt/t/boot
                 mount -t vfat /dev/nvme0n1p1 /mnt/t/boot/efi"
            )
        );
    }

    /// RAID1 over two disks, LVM on the array, ext4 root.
    #[test]
    fn a_raid1_lvm_layout_runs_exactly_these_commands() {
        let disk = |d: &str| DiskLayout {
            disk: d.into(),
            size_bytes: 8 * GIB,
            id: None,
            table: TableKind::Gpt,
            partitions: vec![
                part(&format!("bios-{d}"), Some(1), PartRole::BiosBoot),
                part(&format!("raid-{d}"), None, PartRole::Raid),
            ],
        };
        let storage = StorageLayout {
            disks: vec![disk("vda"), disk("vdb")],
            md: vec![MdLayout {
                name: "md0".into(),
                level: "raid1".into(),
                members: vec!["raid-vda".into(), "raid-vdb".into()],
            }],
            vgs: vec![VgLayout {
                name: "vg0".into(),
                pvs: vec!["md0".into()],
                lvs: vec![LvLayout {
                    name: "root".into(),
                    size_bytes: None,
                }],
            }],
            filesystems: vec![fs("vg0/root", "ext4", Some("/"), Some("/"))],
        };
        let got = commands(&storage, &[("vda", 8 * GIB), ("vdb", 8 * GIB)]);
        let from = got
            .iter()
            .position(|c| c.starts_with("mdadm --create"))
            .expect("mdadm");
        assert_eq!(
            got[from..from + 5].to_vec(),
            lines(
                "mdadm --create /dev/md/md0 --run --metadata=1.2 --homehost=any --name=md0 --level=raid1 --raid-devices=2 /dev/vda2 /dev/vdb2
                 pvcreate -ff -y /dev/md/md0
                 vgcreate vg0 /dev/md/md0
                 lvcreate --yes --wipesignatures=y --name=root --extents=100%FREE vg0
                 mkfs.ext4 -F -q /dev/vg0/root"
            )
        );
        // Both disks were wiped and partitioned alike.
        for d in ["vda", "vdb"] {
            assert!(
                got.contains(&format!("sgdisk --zap-all /dev/{d}")),
                "{got:#?}"
            );
            assert!(got.contains(&format!("sgdisk --new=1:0:+1M --typecode=1:EF02 --change-name=1:bios-{d} --new=2:0:0 --typecode=2:FD00 --change-name=2:raid-{d} /dev/{d}")), "{got:#?}");
        }
    }

    /// MBR: sfdisk's script, the first partition active.
    #[test]
    fn an_mbr_layout_is_written_by_sfdisk() {
        let storage = StorageLayout {
            disks: vec![DiskLayout {
                disk: "sda".into(),
                size_bytes: 4 * GIB,
                id: None,
                table: TableKind::Mbr,
                partitions: vec![
                    part("boot", Some(512), PartRole::Data),
                    part("root", None, PartRole::Data),
                ],
            }],
            md: vec![],
            vgs: vec![],
            filesystems: vec![
                fs("boot", "ext4", Some("/boot"), None),
                fs("root", "btrfs", Some("/"), None),
            ],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (host, log) = machine(dir.path(), &[("sda", 4 * GIB)]);
        partition(&host, &storage).expect("partition");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("tmp/ferry-sfdisk-sda")).expect("script"),
            "label: dos\nsize=512MiB, type=83, bootable\ntype=83\n"
        );
        assert_eq!(
            log.lock().expect("log")[0],
            "sh -c sfdisk --wipe always --wipe-partitions always /dev/sda < /tmp/ferry-sfdisk-sda"
        );
    }

    /// A disk of another size than planned is refused before anything is wiped;
    /// after a failure, the new tables are wiped.
    #[test]
    fn the_wrong_disk_is_refused_and_a_failure_wipes_the_tables() {
        let storage = StorageLayout {
            disks: vec![DiskLayout {
                disk: "vda".into(),
                size_bytes: 20 * GIB,
                id: None,
                table: TableKind::Gpt,
                partitions: vec![part("root", None, PartRole::Data)],
            }],
            md: vec![],
            vgs: vec![],
            filesystems: vec![fs("root", "ext4", Some("/"), Some("/"))],
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (host, log) = machine(dir.path(), &[("vda", 10 * GIB)]);
        let err = format!("{:#}", check_disks(&host, &storage).expect_err("refused"));
        assert!(
            err.contains("disk vda: it has 10737418240 bytes, the plan was made for 21474836480"),
            "{err}"
        );
        assert!(
            !log.lock()
                .expect("log")
                .iter()
                .any(|c| c.starts_with("wipefs"))
        );
        // Right size, another identity: refused too.
        let mut other = storage.clone();
        other.disks[0].size_bytes = 10 * GIB;
        other.disks[0].id = Some("0x5000c500a1b2c3d4".into());
        let err = format!("{:#}", check_disks(&host, &other).expect_err("refused"));
        assert!(
            err.contains("its WWN/serial is none, the plan was made for 0x5000c500a1b2c3d4"),
            "{err}"
        );
        log.lock().expect("log").clear();
        wipe_after_failure(&host, &storage).expect("wiped");
        assert_eq!(
            *log.lock().expect("log"),
            lines(
                "vgchange -an\nmdadm --stop --scan\nwipefs -a /dev/vda\nsgdisk --zap-all /dev/vda"
            )
        );
    }

    /// A planned disk this system still uses is refused before any tool runs; one
    /// held by an array is freed by stopping it, and refused if that fails.
    #[test]
    fn a_disk_in_use_is_refused_before_anything_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (host, log) = machine(dir.path(), &[("vda", 10 * GIB)]);
        let put = |p: &str, t: &str| crate::survey::testing::put(dir.path(), p, t);
        put("/sys/block/vda/dev", "253:0");
        put("/sys/block/vda/vda1/dev", "253:1");
        put("/sys/block/vda/vda1/partition", "1");
        put(
            "/proc/self/mountinfo",
            "30 1 253:1 / /oldroot rw - ext4 /dev/vda1 rw\n",
        );
        let storage = plan().storage;
        assert_eq!(storage.disks[0].disk, "vda");
        let err = format!("{:#}", check_free(&host, &storage).expect_err("mounted"));
        assert!(
            err.contains("disk vda: this system still uses it — vda1 is mounted at /oldroot; nothing was wiped"),
            "{err}"
        );
        assert!(log.lock().expect("log").is_empty());
        put("/proc/self/mountinfo", "");
        put("/sys/block/vda/vda1/holders/md127", "");
        put("/sys/block/md127/dev", "9:127");
        let err = format!("{:#}", check_free(&host, &storage).expect_err("still held"));
        assert!(
            err.contains(
                "after its volume groups and arrays were stopped — md127 is active on vda1"
            ),
            "{err}"
        );
        assert_eq!(
            *log.lock().expect("log"),
            lines("vgchange -an\nmdadm --stop --scan")
        );
        std::fs::remove_file(dir.path().join("sys/block/vda/vda1/holders/md127")).expect("rm");
        check_free(&host, &storage).expect("free once the array is gone");
    }

    #[test]
    fn device_names_follow_the_kernels() {
        assert_eq!(partition_dev("vda", 2), "/dev/vda2");
        assert_eq!(partition_dev("nvme0n1", 1), "/dev/nvme0n1p1");
        assert_eq!(partition_dev("mmcblk0", 3), "/dev/mmcblk0p3");
    }
}
