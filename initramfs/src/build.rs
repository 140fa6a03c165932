//! Builds the Ferry ramdisk: the agent as `/init`, kernel modules chosen by driver set
//! with their full dependency closure, tools with their libraries, optional firmware,
//! the baked-in agent config, then zstd compression.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::cpio::Archive;
use crate::info::{CONFIG_PATH, INFO_PATH, RamdiskInfo};
use crate::manifest::Manifest;
use crate::modules::{ModuleIndex, glob_match};

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

/// Everything a build needs.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The manifest.
    pub manifest: Manifest,
    /// The kernel's module folder (`/lib/modules/<release>`).
    pub modules_dir: PathBuf,
    /// The static agent binary, installed as `/init`.
    pub agent: PathBuf,
    /// Agent config text to bake in (already checked by the caller).
    pub config: Option<String>,
    /// Which drivers.
    pub drivers: DriverSet,
    /// Modules to leave out even if selected.
    pub exclude: Vec<String>,
    /// Whether to copy the firmware the chosen modules ask for.
    pub firmware: bool,
    /// Where firmware lives on the build host.
    pub firmware_dir: PathBuf,
    /// zstd level for the modules (1–19).
    pub level: i32,
}

/// A built ramdisk, before compression.
pub struct Ramdisk {
    /// The archive.
    pub archive: Archive,
    /// What went in.
    pub info: RamdiskInfo,
    /// Firmware files the modules name but the build host lacks.
    pub firmware_missing: Vec<String>,
}

/// Modules in the ramdisk are compressed one by one (the kmod convention for names).
pub const MODULE_SUFFIX: &str = ".zst";

/// Host folders searched for tools, in order.
const TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Maps a host path into the ramdisk's merged-/usr layout.
fn ramdisk_path(host: &Path) -> String {
    let s = host.to_string_lossy();
    for (from, to) in [
        ("/lib/", "usr/lib/"),
        ("/lib64/", "usr/lib64/"),
        ("/bin/", "usr/bin/"),
        ("/sbin/", "usr/bin/"),
        ("/usr/sbin/", "usr/bin/"),
        ("/usr/", "usr/"),
    ] {
        if let Some(rest) = s.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    s.trim_start_matches('/').to_string()
}

/// Assembles the ramdisk.
pub fn assemble(inputs: &Inputs) -> Result<Ramdisk> {
    let mut a = Archive::new();
    skeleton(&mut a)?;
    let agent = fs::read(&inputs.agent).with_context(|| {
        format!(
            "reading the agent binary {} (build it with `cargo xtask ramdisk`)",
            inputs.agent.display()
        )
    })?;
    let agent_needs = crate::elf::needs(&inputs.agent)?;
    ensure!(
        agent_needs.interpreter.is_none() && agent_needs.libraries.is_empty(),
        "{} is dynamically linked; the ramdisk's /init must be the static musl build",
        inputs.agent.display()
    );
    a.file("init", 0o755, agent)?;
    a.symlink("usr/bin/ferry-agent", "/init")?;
    if let Some(config) = &inputs.config {
        a.file(CONFIG_PATH, 0o600, config.clone().into_bytes())?;
    }

    let (modules, preload, release) = add_modules(&mut a, inputs)?;
    let idx = ModuleIndex::open(&inputs.modules_dir)?;
    let m = &inputs.manifest.modules;
    let watch: BTreeSet<String> = m
        .storage
        .iter()
        .chain(&m.network)
        .flat_map(|p| idx.under(p))
        .collect();
    let (firmware, firmware_missing) = if inputs.firmware {
        add_firmware(&mut a, inputs, &modules)?
    } else {
        (Vec::new(), Vec::new())
    };
    let tools = add_tools(&mut a, &inputs.manifest)?;
    for f in &inputs.manifest.files {
        let p = Path::new(f);
        if let Ok(data) = fs::read(p) {
            a.file(&ramdisk_path(p), 0o644, data)?;
        }
    }
    for (path, text) in &inputs.manifest.write {
        a.file(path, 0o644, text.clone().into_bytes())?;
    }
    let info = RamdiskInfo {
        kernel_release: release,
        drivers: inputs.drivers.to_string(),
        preload,
        modules: modules.into_iter().collect(),
        excluded: inputs.exclude.clone(),
        tools,
        firmware,
        watch: watch.into_iter().collect(),
    };
    a.file(INFO_PATH, 0o644, serde_json::to_vec_pretty(&info)?)?;
    Ok(Ramdisk {
        archive: a,
        info,
        firmware_missing,
    })
}

fn skeleton(a: &mut Archive) -> Result<()> {
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "root",
        "mnt",
        "etc/ferry",
        "usr/bin",
        "usr/lib64",
    ] {
        a.dir(d, 0o755)?;
    }
    a.dir("tmp", 0o1777)?;
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.char_device("dev/null", 0o666, 1, 3)?;
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/bin"),
        ("usr/sbin", "bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        a.symlink(link, target)?;
    }
    Ok(())
}

/// Picks the modules, adds their files and the depmod files; returns the module set,
/// the preload order and the kernel release.
fn add_modules(
    a: &mut Archive,
    inputs: &Inputs,
) -> Result<(BTreeSet<String>, Vec<String>, String)> {
    let dir = &inputs.modules_dir;
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
    let m = &inputs.manifest.modules;
    let excluded = |name: &str, path: &str| {
        inputs.exclude.iter().any(|e| e.replace('-', "_") == name)
            || m.exclude.iter().any(|e| {
                path.strip_prefix(e.trim_end_matches('/'))
                    .is_some_and(|r| r.is_empty() || r.starts_with('/'))
            })
    };
    let mut wanted: Vec<String> = m.always.clone();
    match &inputs.drivers {
        DriverSet::All => {
            for prefix in m.storage.iter().chain(&m.network) {
                let found = idx.under(prefix);
                ensure!(
                    !found.is_empty() || !prefix.ends_with(".ko"),
                    "manifest names {prefix}, which kernel {release} does not have"
                );
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
    let order = idx.closure(&wanted).map_err(|unknown| {
        anyhow::anyhow!(
            "kernel {release} has no module named {} (check the manifest's module lists)",
            unknown.join(", ")
        )
    })?;
    let keep: BTreeSet<String> = order.iter().cloned().collect();
    for name in &inputs.exclude {
        if keep.contains(&name.replace('-', "_")) {
            bail!(
                "--exclude-module {name}: other chosen modules need it, so it cannot be left out"
            );
        }
    }
    let base = format!("usr/lib/modules/{release}");
    for (rel, data) in compress_modules(&idx, dir, &keep, inputs.level)? {
        a.file(&format!("{base}/{rel}{MODULE_SUFFIX}"), 0o644, data)?;
    }
    let (dep, soft) = idx.subset_texts(&keep, MODULE_SUFFIX);
    a.file(&format!("{base}/modules.dep"), 0o644, dep.into_bytes())?;
    a.file(&format!("{base}/modules.softdep"), 0o644, soft.into_bytes())?;
    // The whole alias table, not the subset's: the agent names the drivers left out.
    for f in ["modules.builtin", "modules.alias"] {
        if let Ok(data) = fs::read(dir.join(f)) {
            a.file(&format!("{base}/{f}"), 0o644, data)?;
        }
    }
    let preload = idx
        .closure(&m.preload)
        .map_err(|u| anyhow::anyhow!("preload names unknown modules {}", u.join(", ")))?
        .into_iter()
        .filter(|n| keep.contains(n))
        .collect();
    Ok((keep, preload, release))
}

/// A module's path in the module folder, with its compressed content.
type Compressed = (String, Vec<u8>);

/// Compresses each module on its own, on every core: the kernel then unpacks a third
/// of the bytes at boot, and the agent decompresses only the modules it loads.
fn compress_modules(
    idx: &ModuleIndex,
    dir: &Path,
    keep: &BTreeSet<String>,
    level: i32,
) -> Result<Vec<Compressed>> {
    let names: Vec<&String> = keep.iter().collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = names.len().div_ceil(workers).max(1);
    let level = level.clamp(1, 19);
    let one = |name: &String| -> Result<Compressed> {
        let rel = &idx.paths[name];
        let data = fs::read(dir.join(rel))
            .with_context(|| format!("reading module {}", dir.join(rel).display()))?;
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

/// Copies the firmware files the modules name (from their `.modinfo`).
fn add_firmware(
    a: &mut Archive,
    inputs: &Inputs,
    modules: &BTreeSet<String>,
) -> Result<(Vec<String>, Vec<String>)> {
    let idx = ModuleIndex::open(&inputs.modules_dir)?;
    let mut copied = Vec::new();
    let mut missing = Vec::new();
    for name in modules {
        let path = inputs.modules_dir.join(&idx.paths[name]);
        let data = fs::read(&path)?;
        let Ok(elf) = goblin::elf::Elf::parse(&data) else {
            continue;
        };
        let Some(sh) = elf
            .section_headers
            .iter()
            .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".modinfo"))
        else {
            continue;
        };
        let range = sh.file_range().unwrap_or(0..0);
        let Some(modinfo) = data.get(range) else {
            continue;
        };
        for field in modinfo.split(|b| *b == 0) {
            let Some(fw) = field.strip_prefix(b"firmware=") else {
                continue;
            };
            let fw = String::from_utf8_lossy(fw).to_string();
            let found = ["", ".zst", ".xz"]
                .iter()
                .map(|ext| inputs.firmware_dir.join(format!("{fw}{ext}")))
                .find(|p| p.is_file());
            match found {
                Some(p) => {
                    let rel = p.strip_prefix(&inputs.firmware_dir).unwrap_or(&p);
                    a.file(
                        &format!("usr/lib/firmware/{}", rel.display()),
                        0o644,
                        fs::read(&p)?,
                    )?;
                    copied.push(fw);
                }
                None => missing.push(fw),
            }
        }
    }
    copied.sort();
    copied.dedup();
    missing.sort();
    missing.dedup();
    Ok((copied, missing))
}

/// Finds each tool on the build host and adds it with its library closure.
fn add_tools(a: &mut Archive, manifest: &Manifest) -> Result<Vec<String>> {
    let mut programs = Vec::new();
    let mut names = Vec::new();
    for tool in &manifest.tools {
        let Some(host) = TOOL_DIRS
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
        else {
            bail!(
                "tool {tool} is not on this build host (looked in {}); install its Debian package",
                TOOL_DIRS.join(", ")
            );
        };
        let real = fs::canonicalize(&host)?;
        let real_name = real
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let data = fs::read(&real)?;
        a.file(&format!("usr/bin/{real_name}"), 0o755, data)?;
        if real_name != *tool {
            a.symlink(&format!("usr/bin/{tool}"), &real_name)?;
        }
        programs.push(real);
        names.push(tool.clone());
    }
    for lib in crate::elf::closure(&programs)? {
        let data = fs::read(&lib)?;
        a.file(&ramdisk_path(&lib), 0o755, data)?;
    }
    Ok(names)
}

/// zstd-compresses the archive (multithreaded, with a checksum as the kernel expects).
pub fn compress(archive: &Archive, level: i32) -> Result<Vec<u8>> {
    let raw = archive.to_bytes();
    let mut enc = zstd::stream::Encoder::new(Vec::with_capacity(raw.len() / 3), level)?;
    enc.include_checksum(true)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    enc.multithread(threads)?;
    enc.write_all(&raw)?;
    Ok(enc.finish()?)
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

    fn inputs(agent: &str, modules: &str) -> Inputs {
        Inputs {
            manifest: Manifest::parse(crate::manifest::DEFAULT).unwrap(),
            modules_dir: modules.into(),
            agent: agent.into(),
            config: None,
            drivers: DriverSet::Virtio,
            exclude: vec![],
            firmware: false,
            firmware_dir: "/lib/firmware".into(),
            level: 1,
        }
    }

    fn error(i: &Inputs) -> String {
        match assemble(i) {
            Ok(_) => panic!("assembled from bad inputs {i:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn bad_inputs_are_named_with_what_to_do() {
        let err = error(&inputs("/nonexistent/ferry-agent", "/nonexistent/modules"));
        assert!(
            err.contains("reading the agent binary /nonexistent/ferry-agent"),
            "{err}"
        );
        let err = error(&inputs("/bin/sh", "/nonexistent/modules"));
        assert!(err.contains("dynamically linked"), "{err}");
        // busybox-static is a static binary, as the agent must be.
        if std::path::Path::new("/bin/busybox").exists() {
            let err = error(&inputs("/bin/busybox", "/nonexistent/modules"));
            assert!(
                err.contains("/nonexistent/modules does not exist") && err.contains("linux-image"),
                "{err}"
            );
            let empty = tempfile::tempdir().unwrap();
            let err = error(&inputs("/bin/busybox", &empty.path().to_string_lossy()));
            assert!(
                err.contains("modules.dep") && err.contains("depmod"),
                "{err}"
            );
        }
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

    #[test]
    fn host_paths_map_into_merged_usr() {
        assert_eq!(
            ramdisk_path(Path::new("/lib/x86_64-linux-gnu/libc.so.6")),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            ramdisk_path(Path::new("/lib64/ld-linux-x86-64.so.2")),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(ramdisk_path(Path::new("/usr/sbin/lvm")), "usr/bin/lvm");
    }
}
