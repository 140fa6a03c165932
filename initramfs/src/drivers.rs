//! The kernel-module half of a ramdisk: which modules go in (by driver set, with their
//! whole dependency closure), how they are stored (each compressed on its own) and the
//! depmod files that describe the subset.
//!
//! The build (`cargo xtask ramdisk`) adds the build kernel's modules this way; the
//! installed agent adds its own running kernel's modules the same way when it makes a
//! ramdisk for its server (`boot-ramdisk`), so a cloud's own kernel boots the ramdisk
//! with its own drivers. Plain std, zstd and serde: it runs in the static agent.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::cpio::Archive;
use crate::modules::{ModuleIndex, glob_match};

/// Which kernel modules go in (the `modules:` part of `ramdisk.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Modules {
    /// Storage driver folders (or files) for `--drivers all`.
    #[serde(default)]
    pub storage: Vec<String>,
    /// Network driver folders (or files) for `--drivers all`.
    #[serde(default)]
    pub network: Vec<String>,
    /// Folders or files never included.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// The modules of `--drivers virtio`.
    #[serde(default)]
    pub minimal: Vec<String>,
    /// Modules in every ramdisk.
    #[serde(default)]
    pub always: Vec<String>,
    /// Modules loaded at boot whatever the hardware.
    #[serde(default)]
    pub preload: Vec<String>,
}

/// Which drivers go in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverSet {
    /// Every storage and network driver the manifest names.
    All,
    /// The manifest's `minimal` list (virtio).
    Virtio,
    /// Drivers matching these PCI vendor:device ids.
    Pci(Vec<(u16, u16)>),
}

impl std::str::FromStr for DriverSet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(DriverSet::All),
            "virtio" => Ok(DriverSet::Virtio),
            _ => {
                let Some(ids) = s.strip_prefix("pci:") else {
                    bail!(
                        "driver set {s:?} is not one of all, virtio, pci:VVVV:DDDD[,VVVV:DDDD...]"
                    );
                };
                let parse = |id: &str| -> Result<(u16, u16)> {
                    let (v, d) = id
                        .split_once(':')
                        .with_context(|| format!("PCI id {id:?} is not VVVV:DDDD"))?;
                    Ok((
                        u16::from_str_radix(v, 16).with_context(|| format!("PCI vendor {v:?}"))?,
                        u16::from_str_radix(d, 16).with_context(|| format!("PCI device {d:?}"))?,
                    ))
                };
                let ids = ids.split(',').map(parse).collect::<Result<Vec<_>>>()?;
                ensure!(!ids.is_empty(), "pci: needs at least one VVVV:DDDD");
                Ok(DriverSet::Pci(ids))
            }
        }
    }
}

impl std::fmt::Display for DriverSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverSet::All => f.write_str("all"),
            DriverSet::Virtio => f.write_str("virtio"),
            DriverSet::Pci(ids) => {
                let ids: Vec<String> = ids
                    .iter()
                    .map(|(v, d)| format!("{v:04x}:{d:04x}"))
                    .collect();
                write!(f, "pci:{}", ids.join(","))
            }
        }
    }
}

/// How to pick and store the modules.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    /// The manifest's module lists.
    pub rules: &'a Modules,
    /// Which drivers.
    pub drivers: &'a DriverSet,
    /// Modules to leave out even if selected (`--exclude-module`).
    pub exclude: &'a [String],
    /// zstd level for the modules (1–19).
    pub level: i32,
    /// Whether a module the lists name but the kernel lacks is an error (the build,
    /// whose manifest is written for its kernel) or only reported (a server's own
    /// kernel, which may have it built in under another name or not at all).
    pub strict: bool,
}

/// What [`add`] put in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drivers {
    /// The kernel release (the module folder's name).
    pub release: String,
    /// Every module added.
    pub modules: BTreeSet<String>,
    /// Modules to load at boot whatever the hardware, in load order.
    pub preload: Vec<String>,
    /// Every storage and network driver of the kernel, added or not.
    pub watch: Vec<String>,
    /// Names the lists give that this kernel has neither as a module nor built in
    /// (only when not strict).
    pub absent: Vec<String>,
}

/// Modules in a ramdisk are compressed one by one (the kmod convention for names);
/// modules the kernel tree already holds compressed are kept as they are.
pub const MODULE_SUFFIX: &str = ".zst";

/// The name a module file is stored under in the ramdisk.
pub fn stored_path(rel: &str) -> String {
    if rel.ends_with(".ko") {
        format!("{rel}{MODULE_SUFFIX}")
    } else {
        rel.to_string()
    }
}

/// Picks the modules of the kernel module folder `dir` and adds them to `a` under
/// `usr/lib/modules/<release>/`, with the `modules.dep` and `modules.softdep` of the
/// subset and the kernel's whole alias and built-in tables (the agent names drivers
/// left out by them).
pub fn add(a: &mut Archive, dir: &Path, sel: &Selection<'_>) -> Result<Drivers> {
    ensure!(
        dir.is_dir(),
        "kernel module folder {} does not exist; install the kernel's modules (Debian: linux-image-amd64) or pass --modules DIR",
        dir.display()
    );
    let release = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .context("module folder has no name")?;
    let idx = ModuleIndex::open(dir)?;
    let m = sel.rules;
    let mut absent = Vec::new();
    let excluded = |name: &str, path: &str| {
        sel.exclude.iter().any(|e| e.replace('-', "_") == name)
            || m.exclude.iter().any(|e| {
                path.strip_prefix(e.trim_end_matches('/'))
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            })
    };
    let mut wanted: Vec<String> = m.always.clone();
    match sel.drivers {
        DriverSet::All => {
            for prefix in m.storage.iter().chain(&m.network) {
                let found = idx.under(prefix);
                if found.is_empty() && prefix.ends_with(".ko") {
                    ensure!(
                        !sel.strict,
                        "manifest names {prefix}, which kernel {release} does not have"
                    );
                    absent.push(prefix.clone());
                }
                wanted.extend(found);
            }
        }
        DriverSet::Virtio => wanted.extend(m.minimal.iter().cloned()),
        DriverSet::Pci(ids) => {
            wanted.extend(m.minimal.iter().cloned());
            for (vendor, device) in ids {
                let mut matched = false;
                for (pattern, module) in &idx.aliases {
                    if pci_alias_matches(pattern, *vendor, *device) {
                        wanted.push(module.clone());
                        matched = true;
                    }
                }
                ensure!(
                    matched,
                    "no module of kernel {release} drives PCI device {vendor:04x}:{device:04x}"
                );
            }
        }
    }
    wanted.retain(|n| {
        let path = idx
            .paths
            .get(&n.replace('-', "_"))
            .map(String::as_str)
            .unwrap_or("");
        !excluded(&n.replace('-', "_"), path)
    });
    if !sel.strict {
        let (known, unknown): (Vec<String>, Vec<String>) = wanted
            .into_iter()
            .partition(|n| !idx.resolve(n).is_empty() || idx.knows(n));
        absent.extend(unknown);
        wanted = known;
    }
    let order = idx.closure(&wanted).map_err(|unknown| {
        anyhow::anyhow!(
            "kernel {release} has no module named {} (check the manifest's module lists)",
            unknown.join(", ")
        )
    })?;
    let keep: BTreeSet<String> = order.iter().cloned().collect();
    for name in sel.exclude {
        if keep.contains(&name.replace('-', "_")) {
            bail!(
                "--exclude-module {name}: other chosen modules need it, so it cannot be left out"
            );
        }
    }
    let base = format!("usr/lib/modules/{release}");
    for (rel, data) in store_modules(&idx, dir, &keep, sel.level)? {
        a.file(&format!("{base}/{}", stored_path(&rel)), 0o644, data)?;
    }
    let (dep, soft) = idx.subset_texts(&keep, stored_path);
    a.file(&format!("{base}/modules.dep"), 0o644, dep.into_bytes())?;
    a.file(&format!("{base}/modules.softdep"), 0o644, soft.into_bytes())?;
    for f in ["modules.builtin", "modules.alias"] {
        if let Ok(data) = fs::read(dir.join(f)) {
            a.file(&format!("{base}/{f}"), 0o644, data)?;
        }
    }
    let preload = match idx.closure(&m.preload) {
        Ok(p) => p,
        Err(unknown) if sel.strict => {
            bail!("preload names unknown modules {}", unknown.join(", "))
        }
        Err(_) => {
            let known: Vec<&String> = m.preload.iter().filter(|p| idx.knows(p)).collect();
            idx.closure(&known).unwrap_or_default()
        }
    };
    let preload = preload.into_iter().filter(|n| keep.contains(n)).collect();
    let watch: BTreeSet<String> = m
        .storage
        .iter()
        .chain(&m.network)
        .flat_map(|p| idx.under(p))
        .collect();
    absent.sort();
    absent.dedup();
    Ok(Drivers {
        release,
        modules: keep,
        preload,
        watch: watch.into_iter().collect(),
        absent,
    })
}

/// A module's path in the module folder, with its stored content.
type Stored = (String, Vec<u8>);

/// Compresses each plain module on its own, on every core (the kernel then unpacks a
/// third of the bytes at boot, and the agent decompresses only the modules it loads);
/// modules already compressed are kept as they are.
fn store_modules(
    idx: &ModuleIndex,
    dir: &Path,
    keep: &BTreeSet<String>,
    level: i32,
) -> Result<Vec<Stored>> {
    let names: Vec<&String> = keep.iter().collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = names.len().div_ceil(workers).max(1);
    let level = level.clamp(1, 19);
    let one = |name: &String| -> Result<Stored> {
        let rel = &idx.paths[name];
        let data = fs::read(dir.join(rel))
            .with_context(|| format!("reading module {}", dir.join(rel).display()))?;
        if !rel.ends_with(".ko") {
            return Ok((rel.clone(), data));
        }
        Ok((rel.clone(), zstd::bulk::compress(&data, level)?))
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || part.iter().map(|n| one(n)).collect::<Result<Vec<_>>>())
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            let part = h
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("compressing modules failed")))?;
            out.extend(part);
        }
        Ok(out)
    })
}

/// Whether a `modules.alias` PCI pattern covers a vendor:device pair, whatever the
/// subsystem and class fields say.
fn pci_alias_matches(pattern: &str, vendor: u16, device: u16) -> bool {
    let Some(rest) = pattern.strip_prefix("pci:v") else {
        return false;
    };
    let Some((v, rest)) = rest.split_once('d') else {
        return false;
    };
    let d = rest.split("sv").next().unwrap_or("");
    glob_match(v, &format!("{vendor:08X}")) && glob_match(d, &format!("{device:08X}")) && v != "*"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_sets_parse_and_print() {
        for s in ["all", "virtio", "pci:8086:100e,1af4:1000"] {
            assert_eq!(s.parse::<DriverSet>().unwrap().to_string(), s);
        }
        assert!("pci:zz:1".parse::<DriverSet>().is_err());
        assert!(
            "some"
                .parse::<DriverSet>()
                .unwrap_err()
                .to_string()
                .contains("all, virtio")
        );
    }

    #[test]
    fn pci_patterns() {
        assert!(pci_alias_matches(
            "pci:v00008086d0000100Esv*sd*bc*sc*i*",
            0x8086,
            0x100e
        ));
        assert!(!pci_alias_matches(
            "pci:v00008086d0000100Esv*sd*bc*sc*i*",
            0x8086,
            0x100f
        ));
        assert!(!pci_alias_matches(
            "pci:v*d*sv*sd*bc01sc06i01*",
            0x8086,
            0x2922
        ));
    }

    /// A module folder as depmod leaves it: `nvme` needs `nvme_core`, `e1000` is
    /// already compressed (as Debian 13 ships modules), `ext4` is built in.
    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("6.1.0-test");
        let put = |rel: &str, data: &[u8]| {
            let p = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        };
        put("kernel/drivers/nvme/host/nvme.ko", b"\x7fELF nvme");
        put(
            "kernel/drivers/nvme/host/nvme-core.ko",
            b"\x7fELF nvme-core",
        );
        put(
            "kernel/drivers/net/ethernet/intel/e1000.ko.xz",
            b"\xfd7zXZ e1000",
        );
        put("kernel/drivers/md/raid1.ko", b"\x7fELF raid1");
        put(
            "modules.dep",
            b"kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n\
              kernel/drivers/nvme/host/nvme-core.ko:\n\
              kernel/drivers/net/ethernet/intel/e1000.ko.xz:\n\
              kernel/drivers/md/raid1.ko:\n",
        );
        put(
            "modules.alias",
            b"alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n",
        );
        put("modules.builtin", b"kernel/fs/ext4/ext4.ko\n");
        t
    }

    fn rules() -> Modules {
        Modules {
            storage: vec!["kernel/drivers/nvme".into(), "kernel/drivers/ata".into()],
            network: vec![
                "kernel/drivers/net/ethernet".into(),
                "kernel/drivers/net/virtio_net.ko".into(),
            ],
            always: vec!["ext4".into(), "raid1".into(), "btrfs".into()],
            preload: vec!["ext4".into(), "raid1".into(), "btrfs".into()],
            ..Modules::default()
        }
    }

    #[test]
    fn a_servers_own_kernel_gets_what_it_has_and_names_what_it_lacks() {
        let t = tree();
        let dir = t.path().join("6.1.0-test");
        let mut a = Archive::new();
        let rules = rules();
        let sel = Selection {
            rules: &rules,
            drivers: &DriverSet::All,
            exclude: &[],
            level: 1,
            strict: false,
        };
        let d = add(&mut a, &dir, &sel).unwrap();
        assert_eq!(d.release, "6.1.0-test");
        let modules: Vec<&str> = d.modules.iter().map(String::as_str).collect();
        assert_eq!(modules, ["e1000", "nvme", "nvme_core", "raid1"]);
        // ext4 is built in: neither absent nor a file; btrfs and virtio_net are absent.
        assert_eq!(d.absent, ["btrfs", "kernel/drivers/net/virtio_net.ko"]);
        assert_eq!(d.preload, ["raid1"]);
        assert_eq!(d.watch, ["e1000", "nvme", "nvme_core"]);
        let base = "usr/lib/modules/6.1.0-test";
        let plain = a.get(&format!("{base}/kernel/drivers/nvme/host/nvme.ko.zst"));
        let Some(crate::cpio::Entry::File { data, .. }) = plain else {
            panic!("nvme.ko is stored compressed: {plain:?}");
        };
        assert_eq!(zstd::decode_all(&data[..]).unwrap(), b"\x7fELF nvme");
        let kept = a.get(&format!(
            "{base}/kernel/drivers/net/ethernet/intel/e1000.ko.xz"
        ));
        assert!(
            matches!(kept, Some(crate::cpio::Entry::File { data, .. }) if data == b"\xfd7zXZ e1000"),
            "e1000.ko.xz is kept as it is: {kept:?}"
        );
        let Some(crate::cpio::Entry::File { data: dep, .. }) =
            a.get(&format!("{base}/modules.dep"))
        else {
            panic!("no modules.dep");
        };
        let dep = String::from_utf8_lossy(dep);
        assert!(
            dep.contains(
                "kernel/drivers/nvme/host/nvme.ko.zst: kernel/drivers/nvme/host/nvme-core.ko.zst"
            ) && dep.contains("e1000.ko.xz:"),
            "{dep}"
        );
        assert!(a.contains(&format!("{base}/modules.alias")));
        assert!(a.contains(&format!("{base}/modules.builtin")));
    }

    #[test]
    fn the_build_refuses_what_its_kernel_lacks() {
        let t = tree();
        let dir = t.path().join("6.1.0-test");
        let rules = rules();
        let sel = Selection {
            rules: &rules,
            drivers: &DriverSet::All,
            exclude: &[],
            level: 1,
            strict: true,
        };
        let err = format!("{:#}", add(&mut Archive::new(), &dir, &sel).unwrap_err());
        assert!(
            err.contains("virtio_net.ko, which kernel 6.1.0-test does not have"),
            "{err}"
        );
        let without_network = Modules {
            network: vec![],
            ..rules.clone()
        };
        let sel = Selection {
            rules: &without_network,
            ..sel
        };
        let err = format!("{:#}", add(&mut Archive::new(), &dir, &sel).unwrap_err());
        assert!(err.contains("no module named btrfs"), "{err}");
        let err = format!(
            "{:#}",
            add(&mut Archive::new(), &t.path().join("none"), &sel).unwrap_err()
        );
        assert!(err.contains("does not exist"), "{err}");
    }
}
