//! Live capture: which filesystems to read, from which consistent view, and the
//! release of every snapshot taken, also on failure.
//!
//! For each path: when it is a mount point on an LVM logical volume whose volume
//! group has room, an LVM snapshot is taken and mounted read-only under
//! `/run/ferry/snap`; on btrfs, a read-only btrfs snapshot; otherwise, when asked,
//! the filesystem is frozen while it is read (at most for a bound), or else read
//! live and the manifest says so. Kernel and network filesystems are refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use ferry_image::{FsSource, Hold};
use ferry_model::image::Consistency;

use crate::survey::storage::{Mount, mountinfo};
use crate::survey::{Host, RunTool};

/// Filesystem types never captured: kernel views, memory and network filesystems.
const NOT_CAPTURED: [&str; 22] = [
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "ramfs",
    "cgroup",
    "cgroup2",
    "pstore",
    "securityfs",
    "debugfs",
    "tracefs",
    "configfs",
    "bpf",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "efivarfs",
    "fusectl",
    "nfs",
    "nfs4",
    "cifs",
];

/// Where snapshots are mounted while they are read.
pub const SNAP_DIR: &str = "/run/ferry/snap";
/// Name prefix of the LVM snapshots Ferry makes.
pub const SNAP_PREFIX: &str = "ferry-snap-";

/// Whether a filesystem type holds data worth capturing.
pub fn capturable(fstype: &str) -> bool {
    !NOT_CAPTURED.contains(&fstype)
        && !fstype.starts_with("fuse")
        && !fstype.starts_with("nfs")
        && fstype != "overlay"
        && fstype != "squashfs"
        && fstype != "iso9660"
}

/// A snapshot to undo: unmount, then remove.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Taken {
    Lvm {
        mount: PathBuf,
        lv: String,
    },
    /// A snapshot read as a device, not mounted.
    Volume {
        lv: String,
    },
    Btrfs {
        subvolume: PathBuf,
    },
}

/// The trees to read, and the snapshots behind them. Dropping it releases them.
pub struct Plan<'h> {
    /// What to capture.
    pub sources: Vec<FsSource>,
    /// Why some filesystems are read live.
    pub warnings: Vec<String>,
    taken: Vec<Taken>,
    host: &'h Host,
}

impl Drop for Plan<'_> {
    fn drop(&mut self) {
        for t in self.taken.drain(..).rev() {
            release(self.host, &t);
        }
    }
}

fn release(host: &Host, t: &Taken) {
    match t {
        Taken::Lvm { mount, lv } => {
            let m = mount.to_string_lossy();
            if host.tool("umount", &[&m]).is_err() {
                let _ = host.tool("umount", &["-l", &m]);
            }
            let _ = std::fs::remove_dir(mount);
            if let Err(e) = host.tool("lvremove", &["-f", lv]) {
                tracing::error!("could not remove snapshot {lv}: {e}; remove it with lvremove");
            }
        }
        Taken::Volume { lv } => {
            if let Err(e) = host.tool("lvremove", &["-f", lv]) {
                tracing::error!("could not remove snapshot {lv}: {e}; remove it with lvremove");
            }
        }
        Taken::Btrfs { subvolume } => {
            let s = subvolume.to_string_lossy();
            if let Err(e) = host.tool("btrfs", &["subvolume", "delete", &s]) {
                tracing::error!("could not delete snapshot {s}: {e}");
            }
        }
    }
}

/// The mount whose point is `path`, or that holds it.
fn mount_of<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.len())
}

/// An LVM logical volume: `VG/LV`, its size and its group's free bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lv {
    name: String,
    size: u64,
    vg_free: u64,
}

fn lv_of(host: &Host, dev: &str) -> Option<Lv> {
    let uuid = std::fs::read_to_string(host.path(&format!("/sys/dev/block/{dev}/dm/uuid"))).ok()?;
    if !uuid.starts_with("LVM-") {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let out = host
        .tool(
            "lvs",
            &[
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "vg_name,lv_name,lv_size,vg_free,lv_kernel_major,lv_kernel_minor",
            ],
        )
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let num = |x: &serde_json::Value| x.as_str().and_then(|s| s.trim().parse::<u64>().ok());
    v["report"][0]["lv"].as_array()?.iter().find_map(|lv| {
        (lv["lv_kernel_major"].as_str()? == major && lv["lv_kernel_minor"].as_str()? == minor)
            .then(|| {
                Some(Lv {
                    name: format!("{}/{}", lv["vg_name"].as_str()?, lv["lv_name"].as_str()?),
                    size: num(&lv["lv_size"])?,
                    vg_free: num(&lv["vg_free"])?,
                })
            })
            .flatten()
    })
}

/// Copy-on-write room for a snapshot: a tenth of the volume, at least 64 MiB, at
/// most what the group has free.
fn snapshot_size(lv: &Lv) -> Option<u64> {
    const MIN: u64 = 64 << 20;
    let want = (lv.size / 10).max(MIN);
    (lv.vg_free >= MIN).then_some(want.min(lv.vg_free) / 512 * 512)
}

/// Removes snapshots a killed capture left behind.
pub fn clean_stale(host: &Host) {
    let mounts = host
        .read_raw("/proc/self/mountinfo")
        .map(|t| mountinfo(&t))
        .unwrap_or_default();
    for m in mounts.iter().filter(|m| m.point.starts_with(SNAP_DIR)) {
        let _ = host.tool("umount", &["-l", &m.point]);
    }
    if let Ok(out) = host.tool("lvs", &["--reportformat", "json", "-o", "vg_name,lv_name"]) {
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        for lv in v["report"][0]["lv"].as_array().into_iter().flatten() {
            let (Some(vg), Some(name)) = (lv["vg_name"].as_str(), lv["lv_name"].as_str()) else {
                continue;
            };
            if name.starts_with(SNAP_PREFIX) {
                let _ = host.tool("lvremove", &["-f", &format!("{vg}/{name}")]);
            }
        }
    }
}

/// The local, persistent filesystems of `host`, one mount point each: block-device
/// filesystems, not kernel, memory, network or read-only media ones, and not Ferry's
/// own snapshot mounts. A filesystem mounted twice (bind mounts) counts once, at its
/// mount of the whole; each mounted btrfs subvolume counts on its own.
pub fn default_paths(host: &Host) -> Result<Vec<PathBuf>> {
    let mut mounts = mountinfo(
        &host
            .read_raw("/proc/self/mountinfo")
            .map_err(|e| anyhow!("/proc/self/mountinfo: {e}"))?,
    );
    // Whole-filesystem mounts first, so a bind mount of a part finds its whole seen.
    mounts.sort_by_key(|m| m.root != "/");
    let mut seen = std::collections::HashSet::new();
    let mut paths = Vec::new();
    for m in &mounts {
        let part = if m.fstype == "btrfs" {
            m.root.as_str()
        } else {
            ""
        };
        if !capturable(&m.fstype)
            || !m.source.starts_with("/dev/")
            || m.point.starts_with(SNAP_DIR)
            || !seen.insert((m.dev.clone(), part.to_string()))
        {
            continue;
        }
        paths.push(PathBuf::from(&m.point));
    }
    paths.sort();
    Ok(paths)
}

/// How the filesystems are read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Read live: take no snapshot, freeze nothing.
    pub live: bool,
    /// Where no snapshot can be taken, freeze the filesystem (`fsfreeze`) while it
    /// is read, for at most this long; writers wait meanwhile.
    pub freeze: Option<Duration>,
    /// Paths that must stay writable during the capture (the agent's temporary and
    /// state folders, a library folder): their filesystems are never frozen.
    pub keep_writable: Vec<PathBuf>,
}

/// Why the filesystem mounted at `mount` is not frozen; `None`: it may be.
fn not_freezable(opts: &ReadOptions, mounts: &[Mount], mount: &Mount) -> Option<String> {
    opts.freeze?;
    if mount.point == "/" {
        return Some("the root filesystem is never frozen, the system needs it".into());
    }
    opts.keep_writable
        .iter()
        .find(|p| mount_of(mounts, p).is_some_and(|m| m.point == mount.point))
        .map(|p| format!("it holds {}, which must stay writable", p.display()))
}

/// `fsfreeze` of one mounted filesystem exactly while it is read. A watchdog process,
/// started first and in its own session, thaws it at the bound even if the agent
/// dies meanwhile; a thaw that finds the filesystem already thawed means the
/// watchdog came first and the rest of the tree was read live.
pub struct Freeze {
    point: String,
    bound: Duration,
    run: Arc<RunTool>,
    watchdog: Mutex<Option<String>>,
}

impl std::fmt::Debug for Freeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Freeze({}, {:?})", self.point, self.bound)
    }
}

impl Freeze {
    fn seconds(&self) -> u64 {
        self.bound.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl Hold for Freeze {
    fn begin(&self) -> Result<()> {
        let script = format!(
            "setsid sh -c 'sleep {}; exec fsfreeze -u \"$0\"' \"$0\" </dev/null >/dev/null 2>&1 & echo $!",
            self.seconds()
        );
        let pid = (self.run)("sh", &["-c", &script, &self.point])
            .map_err(|e| anyhow!("not frozen, the thaw watchdog did not start ({e})"))?
            .trim()
            .to_string();
        if let Err(e) = (self.run)("fsfreeze", &["-f", &self.point]) {
            stop_watchdog(self.run.as_ref(), &pid);
            bail!("not frozen ({e})");
        }
        tracing::info!("{} frozen for at most {} s", self.point, self.seconds());
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
        Ok(())
    }

    fn end(&self) -> Option<String> {
        let pid = self
            .watchdog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        match (self.run)("fsfreeze", &["-u", &self.point]) {
            Ok(_) => {
                stop_watchdog(self.run.as_ref(), &pid);
                tracing::info!("{} thawed", self.point);
                None
            }
            Err(_) => Some(format!(
                "frozen only for its first {} s (the freeze bound), then thawed and read live",
                self.seconds()
            )),
        }
    }
}

/// Ends the watchdog's session: its shell and its `sleep`.
fn stop_watchdog(run: &RunTool, pid: &str) {
    if let Err(e) = run("sh", &["-c", "kill -TERM -\"$0\"", pid]) {
        tracing::warn!("could not stop the thaw watchdog (process group {pid}): {e}");
    }
}

/// Plans the capture of `paths` (mount points or directories) and of the block data
/// of `raw` devices on `host`, taking the snapshots it needs.
pub fn plan<'h>(
    host: &'h Host,
    paths: &[PathBuf],
    raw: &[PathBuf],
    opts: &ReadOptions,
) -> Result<Plan<'h>> {
    let live = opts.live;
    let mounts = mountinfo(
        &host
            .read_raw("/proc/self/mountinfo")
            .map_err(|e| anyhow!("/proc/self/mountinfo: {e}"))?,
    );
    let mut plan = Plan {
        sources: Vec::new(),
        warnings: Vec::new(),
        taken: Vec::new(),
        host,
    };
    if !live {
        clean_stale(host);
    }
    for (n, path) in paths.iter().enumerate() {
        let shown = path.display().to_string();
        if !path.is_absolute() {
            bail!("{shown}: give an absolute path");
        }
        let Some(mount) = mount_of(&mounts, path) else {
            bail!("{shown}: not on any mounted filesystem");
        };
        if !capturable(&mount.fstype) {
            bail!(
                "{shown}: is on a {} filesystem, which is never captured (kernel, memory or network)",
                mount.fstype
            );
        }
        let mut source = FsSource {
            path: shown.clone(),
            read_from: path.clone(),
            fstype: Some(mount.fstype.clone()),
            ..Default::default()
        };
        let is_mount_point = Path::new(&mount.point) == path.as_path();
        if live {
            plan.sources.push(source);
            continue;
        }
        if !is_mount_point {
            plan.warnings.push(format!(
                "{shown} is a directory of {}, not a mount point: read live",
                mount.point
            ));
            plan.sources.push(source);
            continue;
        }
        // Why no snapshot could be taken.
        let no_snapshot = if let Some(lv) = lv_of(host, &mount.dev) {
            match snapshot_size(&lv) {
                Some(size) => {
                    let taken = lvm_snapshot(host, &lv, size, n, &mount.fstype)?;
                    if let Taken::Lvm { mount, .. } = &taken {
                        source.read_from = mount.clone();
                    }
                    plan.taken.push(taken);
                    source.consistency = Consistency::LvmSnapshot;
                    None
                }
                None => Some(format!(
                    "volume group of {} has no room for a snapshot (64 MiB needed)",
                    lv.name
                )),
            }
        } else if mount.fstype == "btrfs" {
            let snap = path.join(format!(".{SNAP_PREFIX}{}", std::process::id()));
            let s = snap.to_string_lossy().to_string();
            match host.tool("btrfs", &["subvolume", "snapshot", "-r", &shown, &s]) {
                Ok(_) => {
                    plan.taken.push(Taken::Btrfs {
                        subvolume: snap.clone(),
                    });
                    source.read_from = snap;
                    source.consistency = Consistency::BtrfsSnapshot;
                    None
                }
                Err(e) => Some(format!("btrfs snapshot failed ({e})")),
            }
        } else {
            Some(format!(
                "{} on {} cannot be snapshotted",
                mount.fstype, mount.dev
            ))
        };
        if let Some(why) = no_snapshot {
            match (opts.freeze, not_freezable(opts, &mounts, mount)) {
                (Some(bound), None) => {
                    source.hold = Some(Arc::new(Freeze {
                        point: mount.point.clone(),
                        bound,
                        run: host.runner(),
                        watchdog: Mutex::new(None),
                    }));
                    source.consistency = Consistency::Frozen;
                }
                (_, Some(not)) => plan
                    .warnings
                    .push(format!("{shown}: {why}, and not frozen: {not}: read live")),
                (None, None) => plan.warnings.push(format!("{shown}: {why}: read live")),
            }
        }
        plan.sources.push(source);
    }
    for (n, dev) in raw.iter().enumerate() {
        let source = plan_raw(host, &mounts, dev, paths.len() + n, live, &mut plan)?;
        plan.sources.push(source);
    }
    Ok(plan)
}

/// The block data of `dev`: refused while it is mounted or used by RAID, LVM or
/// device-mapper; read from an LVM snapshot when it is a logical volume whose
/// group has room, otherwise live with a warning.
fn plan_raw(
    host: &Host,
    mounts: &[Mount],
    dev: &Path,
    n: usize,
    live: bool,
    plan: &mut Plan<'_>,
) -> Result<FsSource> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let shown = dev.display().to_string();
    if !dev.is_absolute() {
        bail!("{shown}: give the device's absolute path, e.g. /dev/vg0/data");
    }
    let meta = std::fs::metadata(host.path(&shown))
        .map_err(|e| anyhow!("{shown}: cannot use it as a device ({e})"))?;
    if !meta.file_type().is_block_device() {
        bail!("{shown}: not a block device; raw capture reads partitions and volumes");
    }
    let majmin = format!(
        "{}:{}",
        nix::sys::stat::major(meta.rdev()),
        nix::sys::stat::minor(meta.rdev())
    );
    if let Some(m) = mounts.iter().find(|m| m.dev == majmin) {
        bail!(
            "{shown}: mounted at {}; capture its files by that mount point, or unmount it for a raw capture",
            m.point
        );
    }
    let holders: Vec<String> =
        std::fs::read_dir(host.path(&format!("/sys/dev/block/{majmin}/holders")))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
    if !holders.is_empty() {
        bail!(
            "{shown}: in use by {} (RAID, LVM or device-mapper); capture that device instead",
            holders.join(", ")
        );
    }
    let mut source = FsSource {
        path: shown.clone(),
        read_from: dev.to_path_buf(),
        raw: true,
        ..Default::default()
    };
    let lv = if live { None } else { lv_of(host, &majmin) };
    match lv.as_ref().map(|lv| (lv, snapshot_size(lv))) {
        Some((lv, Some(size))) => {
            let (snap_lv, _) = lvm_snapshot_volume(host, lv, size, n)?;
            source.read_from = PathBuf::from(format!("/dev/{snap_lv}"));
            source.consistency = Consistency::LvmSnapshot;
            plan.taken.push(Taken::Volume { lv: snap_lv });
        }
        Some((lv, None)) => plan.warnings.push(format!(
            "{shown}: volume group of {} has no room for a snapshot (64 MiB needed): block data read live",
            lv.name
        )),
        None if live => {}
        None => plan.warnings.push(format!(
            "{shown}: not a logical volume, no snapshot: block data read live; writes to it meanwhile make the copy inconsistent"
        )),
    }
    Ok(source)
}

/// Takes an LVM snapshot of `lv` for the `n`th source: `(VG/NAME, NAME)`.
fn lvm_snapshot_volume(host: &Host, lv: &Lv, size: u64, n: usize) -> Result<(String, String)> {
    let (vg, _) = lv.name.split_once('/').unwrap_or((&lv.name, ""));
    let name = format!("{SNAP_PREFIX}{}-{n}", std::process::id());
    host.tool(
        "lvcreate",
        &["-s", "-n", &name, "-L", &format!("{size}b"), &lv.name],
    )
    .map_err(|e| anyhow!("snapshot of {}: {e}", lv.name))?;
    Ok((format!("{vg}/{name}"), name))
}

fn lvm_snapshot(host: &Host, lv: &Lv, size: u64, n: usize, fstype: &str) -> Result<Taken> {
    let (snap_lv, name) = lvm_snapshot_volume(host, lv, size, n)?;
    let mount = PathBuf::from(SNAP_DIR).join(&name);
    let undo = Taken::Lvm {
        mount: mount.clone(),
        lv: snap_lv.clone(),
    };
    let mounted = std::fs::create_dir_all(host.path(&mount.to_string_lossy()))
        .map_err(|e| anyhow!("{}: {e}", mount.display()))
        .and_then(|()| {
            let opts = if fstype == "xfs" { "ro,nouuid" } else { "ro" };
            host.tool(
                "mount",
                &[
                    "-o",
                    opts,
                    &format!("/dev/{snap_lv}"),
                    &mount.to_string_lossy(),
                ],
            )
            .map_err(|e| anyhow!("mounting snapshot {snap_lv}: {e}"))
        });
    match mounted {
        Ok(_) => Ok(undo),
        Err(e) => {
            release(host, &undo);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::put;
    use std::sync::{Arc, Mutex};

    const LVS: &str = r#"{"report":[{"lv":[{"vg_name":"vg0","lv_name":"root","lv_size":"4294967296","vg_free":"1073741824","lv_kernel_major":"254","lv_kernel_minor":"0"}]}]}"#;

    /// Root on LVM, /proc, and /boot on a partition.
    const MOUNTS_ROOT_LVM: &str = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg0-root rw\n\
         23 22 0:21 / /proc rw - proc proc rw\n\
         24 22 8:1 / /boot rw - ext4 /dev/vda1 rw\n";

    /// A host whose root is `dir`, recording every tool call in `log` and answering
    /// with `reply(tool, call)`.
    fn recorder(
        dir: &Path,
        log: Arc<Mutex<Vec<String>>>,
        reply: impl Fn(&str, &str) -> Result<String, String> + Send + Sync + 'static,
    ) -> Host {
        Host::new(
            dir,
            Box::new(move |name, args| {
                let call = format!("{name} {}", args.join(" "));
                log.lock().unwrap().push(call.clone());
                reply(name, &call)
            }),
        )
    }

    /// The recorded calls, without the `lvs` queries.
    fn calls_but_lvs(log: &Mutex<Vec<String>>) -> Vec<String> {
        let calls = log.lock().unwrap();
        calls
            .iter()
            .filter(|c| !c.starts_with("lvs"))
            .cloned()
            .collect()
    }

    /// A host whose root is a temp tree, recording every tool call.
    fn fake(dir: &Path, log: Arc<Mutex<Vec<String>>>) -> Host {
        recorder(dir, log, |name, _| {
            Ok(if name == "lvs" {
                LVS.to_string()
            } else {
                String::new()
            })
        })
    }

    #[test]
    fn root_on_lvm_is_read_from_a_snapshot_that_is_always_released() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "/proc/self/mountinfo", MOUNTS_ROOT_LVM);
        put(r, "/sys/dev/block/254:0/dm/uuid", "LVM-abc\n");
        let log = Arc::new(Mutex::new(Vec::new()));
        let host = fake(r, log.clone());
        let pid = std::process::id();
        {
            let p = plan(
                &host,
                &[PathBuf::from("/"), PathBuf::from("/boot")],
                &[],
                &ReadOptions::default(),
            )
            .unwrap();
            assert_eq!(p.sources[0].consistency, Consistency::LvmSnapshot);
            assert_eq!(
                p.sources[0].read_from,
                PathBuf::from(format!("/run/ferry/snap/ferry-snap-{pid}-0"))
            );
            assert_eq!(p.sources[1].consistency, Consistency::Live);
            assert!(p.warnings[0].contains("/boot: ext4 on 8:1 cannot be snapshotted"));
        }
        let got = log.lock().unwrap().clone();
        let lvs_report = "lvs --reportformat json --units b --nosuffix -o vg_name,lv_name,lv_size,vg_free,lv_kernel_major,lv_kernel_minor";
        assert_eq!(
            got,
            [
                "lvs --reportformat json -o vg_name,lv_name".to_string(),
                lvs_report.to_string(),
                // A tenth of 4 GiB.
                format!("lvcreate -s -n ferry-snap-{pid}-0 -L 429496320b vg0/root"),
                format!(
                    "mount -o ro /dev/vg0/ferry-snap-{pid}-0 /run/ferry/snap/ferry-snap-{pid}-0"
                ),
                format!("umount /run/ferry/snap/ferry-snap-{pid}-0"),
                format!("lvremove -f vg0/ferry-snap-{pid}-0"),
            ]
        );
        // Kernel filesystems are refused, with the reason.
        let live = ReadOptions {
            live: true,
            ..Default::default()
        };
        let e = plan(&host, &[PathBuf::from("/proc")], &[], &live)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("proc filesystem, which is never captured"),
            "{e}"
        );
    }

    #[test]
    fn by_default_every_local_persistent_filesystem_is_captured_once() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(
            r,
            "/proc/self/mountinfo",
            &(MOUNTS_ROOT_LVM.to_string()
                + "25 24 8:2 / /boot/efi rw - vfat /dev/vda2 rw\n\
             26 22 0:25 / /run rw - tmpfs tmpfs rw\n\
             27 22 0:40 / /home rw - btrfs /dev/vdb rw\n\
             28 22 0:40 /data /srv/data rw - btrfs /dev/vdb rw\n\
             29 22 254:0 /var/www /srv/www rw - ext4 /dev/mapper/vg0-root rw\n\
             30 22 0:50 / /mnt/nfs rw - nfs4 server:/x rw\n\
             31 26 254:3 / /run/ferry/snap/ferry-snap-1-0 ro - ext4 /dev/mapper/vg0-ferry--snap rw\n\
             32 22 11:0 / /media/cd ro - iso9660 /dev/sr0 ro\n"),
        );
        let host = fake(r, Arc::new(Mutex::new(Vec::new())));
        let got = default_paths(&host).unwrap();
        let want: Vec<PathBuf> = ["/", "/boot", "/boot/efi", "/home", "/srv/data"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(got, want);
    }

    /// Root on a partition, /srv (xfs) and the agent's state on their own disks.
    const MOUNTS_PLAIN: &str = "22 1 8:1 / / rw - ext4 /dev/vda1 rw\n\
         23 22 8:16 / /srv rw - xfs /dev/vdb rw\n\
         24 22 8:32 / /var/lib/ferry-agent rw - ext4 /dev/vdc rw\n";

    /// A host answering `sh` with a watchdog pid and failing the `fsfreeze` calls
    /// listed in `failing`, recording every call.
    fn freezer(dir: &Path, log: Arc<Mutex<Vec<String>>>, failing: &'static [&'static str]) -> Host {
        recorder(dir, log, move |name, call| {
            if failing.iter().any(|f| call.starts_with(f)) {
                return Err(format!("{call}: Invalid argument"));
            }
            Ok(if name == "sh" {
                "4242\n".into()
            } else {
                String::new()
            })
        })
    }

    #[test]
    fn without_a_snapshot_a_filesystem_is_frozen_exactly_while_read_and_thawed_at_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "/proc/self/mountinfo", MOUNTS_PLAIN);
        let opts = ReadOptions {
            live: false,
            freeze: Some(Duration::from_secs(30)),
            keep_writable: vec![PathBuf::from("/var/lib/ferry-agent")],
        };
        let paths = ["/", "/srv", "/var/lib/ferry-agent"].map(PathBuf::from);
        let log = Arc::new(Mutex::new(Vec::new()));
        let host = freezer(dir.path(), log.clone(), &[]);
        let p = plan(&host, &paths, &[], &opts).unwrap();
        let kinds: Vec<_> = p.sources.iter().map(|s| s.consistency).collect();
        use Consistency::{Frozen, Live};
        assert_eq!(kinds, [Live, Frozen, Live]);
        assert!(p.warnings[0].contains("/: ext4 on 8:1 cannot be snapshotted, and not frozen: the root filesystem is never frozen"), "{:?}", p.warnings);
        assert!(
            p.warnings[1].contains("it holds /var/lib/ferry-agent, which must stay writable"),
            "{:?}",
            p.warnings
        );
        assert!(
            log.lock().unwrap().iter().all(|c| !c.contains("fsfreeze")),
            "nothing frozen before the read"
        );
        let hold = p.sources[1].hold.clone().expect("a freeze");
        hold.begin().unwrap();
        assert_eq!(hold.end(), None, "thawed by the agent: frozen all along");
        let calls = calls_but_lvs(&log);
        assert_eq!(calls.len(), 4, "{calls:?}");
        assert!(
            calls[0].starts_with("sh -c setsid sh -c 'sleep 30; exec fsfreeze -u \"$0\"'")
                && calls[0].ends_with(" /srv"),
            "{calls:?}"
        );
        assert_eq!(
            calls[1..],
            [
                "fsfreeze -f /srv",
                "fsfreeze -u /srv",
                "sh -c kill -TERM -\"$0\" 4242"
            ]
        );

        // The watchdog came first: the thaw finds nothing frozen, the tree was read
        // live after the bound, and the watchdog (gone) is not signalled.
        let log = Arc::new(Mutex::new(Vec::new()));
        let host = freezer(dir.path(), log.clone(), &["fsfreeze -u"]);
        let p = plan(&host, &paths[1..2], &[], &opts).unwrap();
        let hold = p.sources[0].hold.clone().unwrap();
        hold.begin().unwrap();
        let why = hold.end().expect("read partly live");
        assert!(why.contains("frozen only for its first 30 s"), "{why}");
        assert!(!log.lock().unwrap().iter().any(|c| c.contains("kill")));

        // A filesystem that cannot be frozen is read live; the watchdog is stopped.
        let log = Arc::new(Mutex::new(Vec::new()));
        let host = freezer(dir.path(), log.clone(), &["fsfreeze -f"]);
        let p = plan(&host, &paths[1..2], &[], &opts).unwrap();
        let e = p.sources[0].hold.clone().unwrap().begin().unwrap_err();
        assert!(
            e.to_string().contains("not frozen (fsfreeze -f /srv"),
            "{e}"
        );
        assert!(log.lock().unwrap().last().unwrap().contains("kill -TERM"));
    }

    #[test]
    fn a_raw_logical_volume_is_read_from_an_unmounted_snapshot_that_is_always_released() {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "/proc/self/mountinfo", MOUNTS_ROOT_LVM);
        put(r, "/sys/dev/block/254:1/dm/uuid", "LVM-def\n");
        std::fs::create_dir_all(r.join("dev/vg0")).unwrap();
        let node = |name: &str, minor| {
            let p = r.join("dev/vg0").join(name);
            mknod(
                &p,
                SFlag::S_IFBLK,
                Mode::from_bits_truncate(0o600),
                makedev(254, minor),
            )
        };
        if node("db", 1).is_err() || node("root", 0).is_err() {
            eprintln!("SKIP: cannot make device nodes here (needs root)");
            return;
        }
        let lvs = r#"{"report":[{"lv":[{"vg_name":"vg0","lv_name":"db","lv_size":"1073741824","vg_free":"1073741824","lv_kernel_major":"254","lv_kernel_minor":"1"}]}]}"#;
        let log = Arc::new(Mutex::new(Vec::new()));
        let host = recorder(r, log.clone(), move |name, _| {
            Ok(if name == "lvs" {
                lvs.to_string()
            } else {
                String::new()
            })
        });
        let pid = std::process::id();
        {
            let p = plan(
                &host,
                &[],
                &[PathBuf::from("/dev/vg0/db")],
                &ReadOptions::default(),
            )
            .unwrap();
            let s = &p.sources[0];
            assert!(s.raw && s.path == "/dev/vg0/db");
            assert_eq!(s.consistency, Consistency::LvmSnapshot);
            assert_eq!(
                s.read_from,
                PathBuf::from(format!("/dev/vg0/ferry-snap-{pid}-0"))
            );
        }
        let got = calls_but_lvs(&log);
        assert_eq!(
            got,
            [
                format!("lvcreate -s -n ferry-snap-{pid}-0 -L 107374080b vg0/db"),
                format!("lvremove -f vg0/ferry-snap-{pid}-0"),
            ],
            "never mounted, removed when done"
        );
        // The mounted root volume is refused, by its mount point.
        let e = plan(
            &host,
            &[],
            &[PathBuf::from("/dev/vg0/root")],
            &ReadOptions::default(),
        )
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("/dev/vg0/root: mounted at /;"),
            "{e}"
        );
    }

    #[test]
    fn a_full_volume_group_means_a_live_read_with_a_warning() {
        let lv = Lv {
            name: "vg0/root".into(),
            size: 10 << 30,
            vg_free: 4 << 20,
        };
        assert_eq!(snapshot_size(&lv), None);
        let roomy = Lv {
            vg_free: 100 << 20,
            ..lv
        };
        assert_eq!(snapshot_size(&roomy), Some(100 << 20));
    }
}
