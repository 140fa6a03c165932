//! Coldplug, as udev does it at boot: every device's `modalias` is matched against the
//! kernel's alias table and the matching modules are loaded with their dependencies,
//! until no new device asks for more. Devices whose driver exists in the kernel but was
//! left out of the ramdisk are named.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_initramfs::modules::ModuleIndex;
use ferry_model::protocol::{MissingDriver, ModuleFailure};

use super::sys::{self, Load};

/// What coldplug did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Modules loaded, in order.
    pub loaded: Vec<String>,
    /// Modules the kernel refused.
    pub failed: Vec<ModuleFailure>,
    /// Devices left without a driver because the ramdisk lacks it.
    pub missing: Vec<MissingDriver>,
}

/// Every device with a `modalias`, found the way udev's coldplug finds them: through
/// each bus's device list (`<sys>/bus/*/devices/*`), which is far fewer folders to read
/// than a walk of `/sys/devices` (on an emulated CPU each read costs). Returns
/// (device path under `<sys>/bus`, modalias).
pub fn modaliases(sys: &Path) -> Vec<(PathBuf, String)> {
    let list = |dir: PathBuf| fs::read_dir(dir).into_iter().flatten().flatten();
    let mut out: Vec<(PathBuf, String)> = list(sys.join("bus"))
        .flat_map(|bus| list(bus.path().join("devices")))
        .filter_map(|dev| {
            let text = fs::read_to_string(dev.path().join("modalias")).ok()?;
            let alias = text.trim();
            (!alias.is_empty()).then(|| (dev.path(), alias.to_string()))
        })
        .collect();
    out.sort();
    out
}

/// The module folder of the running kernel.
pub fn module_dir(release: &str) -> PathBuf {
    Path::new("/lib/modules").join(release)
}

/// Loads modules by name with their dependencies (the ramdisk's preload list).
pub fn load_named(idx: &ModuleIndex, dir: &Path, names: &[String]) -> Outcome {
    let mut out = Outcome::default();
    load_all(idx, dir, names, &mut BTreeSet::new(), &mut out);
    out
}

/// Reads the ramdisk's module index (once: on an emulated CPU parsing it is slow).
pub fn index(dir: &Path) -> Result<ModuleIndex, String> {
    ModuleIndex::open(dir).map_err(|e| e.to_string())
}

/// Loads the drivers of present devices, for up to `rounds` passes, then names the
/// devices that a `watch` driver would drive but the ramdisk lacks.
pub fn coldplug(idx: &ModuleIndex, dir: &Path, watch: &[String], rounds: usize) -> Outcome {
    let mut out = Outcome::default();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    for _ in 0..rounds {
        let mut wanted = Vec::new();
        for (_, alias) in modaliases(Path::new("/sys")) {
            for m in idx.for_modalias(&alias) {
                if idx.paths.contains_key(&m) && !tried.contains(&m) {
                    wanted.push(m);
                }
            }
        }
        if wanted.is_empty() {
            break;
        }
        // Buses and NICs first, alone: networking waits for them, while disk
        // controllers (the ATA stack is slow to probe) can come a round later.
        let early = |m: &String| {
            let path = idx.paths.get(m).map(String::as_str).unwrap_or("");
            path.contains("/drivers/virtio/") || path.contains("/drivers/net/")
        };
        if wanted.iter().any(early) {
            wanted.retain(early);
        }
        load_all(idx, dir, &wanted, &mut tried, &mut out);
        // New buses (virtio, scsi hosts) need a moment to show their devices.
        std::thread::sleep(Duration::from_millis(50));
    }
    // The ramdisk keeps the kernel's whole alias table, so `idx` also knows the
    // drivers that were left out.
    let watch: BTreeSet<&str> = watch.iter().map(String::as_str).collect();
    out.missing = missing(idx, idx, &modaliases(Path::new("/sys")))
        .into_iter()
        .filter(|m| m.modules.iter().any(|c| watch.contains(c.as_str())))
        .collect();
    out
}

fn load_all(
    idx: &ModuleIndex,
    dir: &Path,
    names: &[String],
    tried: &mut BTreeSet<String>,
    out: &mut Outcome,
) {
    let order = match idx.closure(names) {
        Ok(order) => order,
        Err(unknown) => {
            for m in unknown {
                out.failed.push(ModuleFailure {
                    module: m,
                    error: "not in this ramdisk".into(),
                });
            }
            let known: Vec<&String> = names.iter().filter(|n| idx.knows(n)).collect();
            idx.closure(&known).unwrap_or_default()
        }
    };
    for m in order {
        if !tried.insert(m.clone()) {
            continue;
        }
        let Some(rel) = idx.paths.get(&m) else {
            continue;
        };
        match sys::load_module(&dir.join(rel)) {
            Ok(Load::Loaded) => out.loaded.push(m),
            Ok(Load::Already) => {}
            Err(e) => out.failed.push(ModuleFailure {
                module: m,
                error: e.to_string(),
            }),
        }
    }
}

/// Devices that no loaded driver claimed and whose driver is in the full kernel but
/// not in the ramdisk.
pub fn missing(
    have: &ModuleIndex,
    full: &ModuleIndex,
    devices: &[(PathBuf, String)],
) -> Vec<MissingDriver> {
    let mut out = Vec::new();
    for (dev, alias) in devices {
        if dev.join("driver").exists() {
            continue;
        }
        let candidates = full.for_modalias(alias);
        if candidates.is_empty() || candidates.iter().any(|m| have.paths.contains_key(m)) {
            continue;
        }
        out.push(MissingDriver {
            device: dev.to_string_lossy().to_string(),
            modalias: alias.clone(),
            modules: candidates,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_modaliases_and_names_drivers_left_out() {
        let root = tempfile::tempdir().unwrap();
        let nic = root.path().join("devices/pci0000:00/0000:00:03.0");
        let disk = root.path().join("devices/pci0000:00/0000:00:04.0");
        let bus = root.path().join("bus/pci/devices");
        fs::create_dir_all(&bus).unwrap();
        // A device without a modalias is skipped.
        fs::create_dir_all(root.path().join("devices/platform/serial8250")).unwrap();
        std::os::unix::fs::symlink(
            root.path().join("devices/platform/serial8250"),
            bus.join("serial8250"),
        )
        .unwrap();
        for (dir, alias) in [
            (
                &nic,
                "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
            ),
            (
                &disk,
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            ),
        ] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("modalias"), format!("{alias}\n")).unwrap();
            std::os::unix::fs::symlink(dir, bus.join(dir.file_name().unwrap())).unwrap();
        }
        // The disk has a driver bound already.
        fs::create_dir_all(disk.join("driver")).unwrap();
        let found = modaliases(root.path());
        assert_eq!(found.len(), 2);
        let full = ModuleIndex::parse(
            "kernel/e1000.ko:\nkernel/virtio_pci.ko:\n",
            "alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\nalias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n",
            "",
            "",
        )
        .unwrap();
        let have = ModuleIndex::parse("kernel/virtio_pci.ko:\n", "", "", "").unwrap();
        let missing = missing(&have, &full, &found);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert_eq!(missing[0].modules, ["e1000"]);
        assert!(
            missing[0].device.ends_with("bus/pci/devices/0000:00:03.0"),
            "{missing:?}"
        );
    }
}
