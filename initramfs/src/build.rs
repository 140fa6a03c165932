//! Builds the Ferry ramdisk: the agent as `/init`, tools with their libraries, the
//! baked-in agent config (the base), kernel modules chosen by driver set with their
//! full dependency closure ([`crate::drivers`]) and optional firmware, then zstd
//! compression.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::cpio::Archive;
use crate::drivers::Selection;
pub use crate::drivers::{DriverSet, MODULE_SUFFIX};
use crate::info::{CONFIG_PATH, INFO_PATH, RamdiskInfo};
use crate::manifest::Manifest;
use crate::modules::ModuleIndex;

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

/// A built ramdisk, before compression, in two parts: the kernel unpacks concatenated
/// archives in order, and a server's own ramdisk is the base with its own kernel's
/// drivers instead of the build kernel's (`boot-ramdisk`).
pub struct Ramdisk {
    /// Everything but the kernel's modules and firmware: the agent as `/init`, the
    /// tools with their libraries, files, the baked-in config.
    pub base: Archive,
    /// The build kernel's modules and firmware, and `ramdisk.json`.
    pub drivers: Archive,
    /// What went in.
    pub info: RamdiskInfo,
    /// Firmware files the modules name but the build host lacks.
    pub firmware_missing: Vec<String>,
}

impl Ramdisk {
    /// The whole ramdisk as one archive.
    pub fn whole(&self) -> Result<Archive> {
        let mut a = self.base.clone();
        a.extend(&self.drivers)?;
        Ok(a)
    }
}

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

    let mut d = Archive::new();
    let sel = Selection {
        rules: &inputs.manifest.modules,
        drivers: &inputs.drivers,
        exclude: &inputs.exclude,
        level: inputs.level,
        strict: true,
    };
    let drivers = crate::drivers::add(&mut d, &inputs.modules_dir, &sel)?;
    let (firmware, firmware_missing) = if inputs.firmware {
        add_firmware(&mut d, inputs, &drivers.modules)?
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
        kernel_release: drivers.release,
        drivers: inputs.drivers.to_string(),
        preload: drivers.preload,
        modules: drivers.modules.into_iter().collect(),
        excluded: inputs.exclude.clone(),
        tools,
        firmware,
        watch: drivers.watch,
    };
    d.file(INFO_PATH, 0o644, serde_json::to_vec_pretty(&info)?)?;
    Ok(Ramdisk {
        base: a,
        drivers: d,
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
