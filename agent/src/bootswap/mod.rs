//! `boot-ramdisk`: the installed agent swaps its server's boot to the Ferry ramdisk.
//!
//! Clouds give no PXE and rarely an ISO, and force their own kernel and network setup.
//! So the ramdisk is made on the server for the server: the published base (agent and
//! tools, no kernel) from the store, checked against the command's digests, plus the
//! server's *own running kernel* and its storage and network drivers, plus its network
//! (addresses, MTU, routes and name servers by MAC, so it needs no DHCP), plus this
//! agent's identity and state, so the ramdisk agent is the same agent — same id, same
//! mailbox, kind *ramdisk* — and never runs a command the installed one ran.
//!
//! It is entered by one of three methods ([`BootMethod`]), each with a way back:
//! `grub-once` (an entry booted once; the default is untouched), `kexec` (nothing on
//! disk changes), `init` (for servers started without a boot loader: the init the
//! kernel starts is replaced by a shim that puts it back first). The ramdisk reboots
//! by itself when its agent has not reached the store in `fallback_secs`, and the
//! kernel reboots 10 s after a panic, so a ramdisk that never reports brings the
//! server back to its own system.
//!
//! The work is split so that nothing changes on the server until everything is
//! checked and built: [`prepare`] (while the command runs: choose the method, check
//! room and the way back, fetch and check the base, add the drivers) and
//! [`Prepared::enter`] (after the answer is stored and the command is done: add the
//! identity and state as they are then, install the method, reboot).

pub mod grub;
pub mod shim;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use ferry_initramfs::cpio::Archive;
use ferry_initramfs::drivers::{DriverSet, Selection};
use ferry_initramfs::info::{BaseInfo, INFO_PATH, RamdiskInfo};
use ferry_model::protocol::{BootMethod, Entered};

/// Where grub-once puts the ramdisk, inside `/boot`.
pub const GRUB_RAMDISK: &str = "ferry-ramdisk.img";
/// The ramdisk's file name in the agent's state folder (kexec and init).
pub const STATE_RAMDISK: &str = "ramdisk.img";
/// The state folder inside the ramdisk.
const RAMDISK_STATE_DIR: &str = "var/lib/ferry-agent";
/// Room kept free beyond the ramdisk on the filesystem that holds it.
const SPARE_BYTES: u64 = 16 << 20;

/// What the server offers for each method, gathered from the running system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The running kernel's release.
    pub release: String,
    /// The running kernel's image, when found (`/boot/vmlinuz-<release>`).
    pub kernel: Option<PathBuf>,
    /// Why this kernel cannot unpack the ramdisk (no zstd), when it cannot.
    pub kernel_problem: Option<String>,
    /// Whether a boot loader started this kernel (`BOOT_IMAGE=` on its command line).
    pub boot_loader_started: bool,
    /// GRUB, when it can boot an entry once; else why not.
    pub grub: Result<GrubPlace, String>,
    /// Why kexec cannot be used, when it cannot.
    pub kexec_problem: Option<String>,
    /// Why the init cannot be replaced, when it cannot.
    pub init_problem: Option<String>,
    /// Free bytes where grub-once puts the ramdisk (`/boot`).
    pub boot_free: u64,
    /// Free bytes in the agent's state folder (kexec and init).
    pub state_free: u64,
    /// Memory available, in bytes.
    pub mem_available: u64,
    /// Parameters of this boot to keep (the consoles).
    pub consoles: Vec<String>,
}

/// Where GRUB finds the kernel and the ramdisk, and its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubPlace {
    /// GRUB's folder (`/boot/grub` or `/boot/grub2`).
    pub dir: PathBuf,
    /// UUID of the filesystem holding `/boot`.
    pub uuid: String,
    /// The path of `/boot` inside that filesystem (`/boot`, or empty when `/boot` is a
    /// filesystem of its own).
    pub prefix: String,
}

/// The method to use for `wanted`, and why; or why none can be used.
pub fn choose(wanted: BootMethod, f: &Facts, ramdisk_bytes: u64) -> Result<(BootMethod, String)> {
    if let Some(p) = &f.kernel_problem {
        bail!("{p}");
    }
    let need = ramdisk_bytes + SPARE_BYTES;
    let room = |free: u64, place: &str| -> Option<String> {
        (free < need).then(|| {
            format!(
                "{place} has {} MiB free and the ramdisk needs {} MiB",
                free >> 20,
                need >> 20
            )
        })
    };
    let grub_problem = match &f.grub {
        _ if !f.boot_loader_started => Some(
            "no boot loader started this kernel (no BOOT_IMAGE= on its command line)".to_string(),
        ),
        Err(why) => Some(why.clone()),
        Ok(_) if f.kernel.is_none() => Some(format!(
            "the running kernel's image /boot/vmlinuz-{} is not there",
            f.release
        )),
        Ok(_) => room(f.boot_free, "/boot"),
    };
    let kexec_problem = f
        .kexec_problem
        .clone()
        .or_else(|| {
            f.kernel.is_none().then(|| {
                format!(
                    "the running kernel's image /boot/vmlinuz-{} is not there",
                    f.release
                )
            })
        })
        .or_else(|| room(f.state_free, "the agent's state folder"))
        .or_else(|| {
            (f.mem_available < 3 * ramdisk_bytes + (256 << 20)).then(|| {
                format!(
                    "{} MiB of memory are available; kexec needs {} MiB",
                    f.mem_available >> 20,
                    (3 * ramdisk_bytes + (256 << 20)) >> 20
                )
            })
        });
    let init_problem = f
        .init_problem
        .clone()
        .or_else(|| room(f.state_free, "the agent's state folder"));
    let problem = |m: BootMethod| match m {
        BootMethod::GrubOnce => grub_problem.clone(),
        BootMethod::Kexec => kexec_problem.clone(),
        BootMethod::Init => init_problem.clone(),
        BootMethod::Auto => None,
    };
    if wanted != BootMethod::Auto {
        return match problem(wanted) {
            None => Ok((wanted, format!("{wanted} was asked for"))),
            Some(p) => bail!("{wanted} cannot be used here: {p}"),
        };
    }
    // Safest first: grub-once passes through the firmware and leaves the default
    // boot alone; kexec changes nothing on disk; init replaces a file (put back first).
    let mut why_not = Vec::new();
    for m in [BootMethod::GrubOnce, BootMethod::Kexec, BootMethod::Init] {
        match problem(m) {
            None if why_not.is_empty() => {
                return Ok((m, format!("{m}: the safest method that works here")));
            }
            None => {
                return Ok((m, format!("{m}, because {}", why_not.join("; "))));
            }
            Some(p) => why_not.push(format!("not {m}: {p}")),
        }
    }
    bail!("no way into the ramdisk works here: {}", why_not.join("; "))
}

impl Facts {
    /// Looks at the running system; `state_dir` is the agent's state folder.
    pub fn gather(state_dir: &Path) -> Facts {
        let release = read_trimmed("/proc/sys/kernel/osrelease");
        let kernel = ["vmlinuz", "vmlinux"]
            .iter()
            .map(|k| PathBuf::from(format!("/boot/{k}-{release}")))
            .find(|p| p.is_file());
        let cmdline = read_trimmed("/proc/cmdline");
        let words = ferry_boot::cmdline::words(&cmdline);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Facts {
            kernel_problem: std::fs::read_to_string(format!("/boot/config-{release}"))
                .ok()
                .and_then(|c| zstd_problem(&release, &c)),
            release,
            kernel,
            boot_loader_started: words.iter().any(|w| w.starts_with("BOOT_IMAGE=")),
            grub: grub_place(&mountinfo),
            kexec_problem: (read_trimmed("/proc/sys/kernel/kexec_load_disabled") == "1")
                .then(|| "kexec is disabled (kernel.kexec_load_disabled = 1)".to_string()),
            init_problem: shim::problem(),
            boot_free: free_bytes(Path::new("/boot")),
            state_free: free_bytes(state_dir),
            mem_available: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("MemAvailable:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                })
                .map_or(0, |kib| kib << 10),
            consoles: words
                .into_iter()
                .filter(|w| w.starts_with("console="))
                .collect(),
        }
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn free_bytes(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

/// Why a kernel with this build config cannot unpack a zstd ramdisk, if it cannot.
pub fn zstd_problem(release: &str, config: &str) -> Option<String> {
    let set = config.lines().any(|l| l.trim() == "CONFIG_RD_ZSTD=y");
    (!set && config.contains("CONFIG_BLK_DEV_INITRD=y")).then(|| {
        format!(
            "kernel {release} cannot unpack a zstd-compressed ramdisk (CONFIG_RD_ZSTD is not set; kernels before 5.9 lack it); boot this server into the ramdisk by PXE or ISO instead"
        )
    })
}

/// The mount holding `path`: (mount point, filesystem type, source device), from
/// `/proc/self/mountinfo` text.
pub fn mount_of(path: &str, mountinfo: &str) -> Option<(String, String, String)> {
    let inside = |point: &str| {
        point == "/"
            || path == point
            || path
                .strip_prefix(point)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    // The deepest mount point holding the path; a later line stacks over an earlier
    // one at the same point.
    crate::survey::storage::mountinfo(mountinfo)
        .into_iter()
        .filter(|m| inside(&m.point))
        .enumerate()
        .max_by_key(|(i, m)| (m.point.len(), *i))
        .map(|(_, m)| (m.point, m.fstype, m.source))
}

/// Where GRUB finds the kernel and ramdisk, or why grub-once cannot be used.
fn grub_place(mountinfo: &str) -> Result<GrubPlace, String> {
    let Some(dir) = ["/boot/grub", "/boot/grub2"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("grub.cfg").is_file())
    else {
        return Err("no GRUB configuration (/boot/grub/grub.cfg or /boot/grub2/grub.cfg)".into());
    };
    let cfg = std::fs::read_to_string(dir.join("grub.cfg")).map_err(|e| e.to_string())?;
    if let Some(p) = grub::config_problem(&cfg) {
        return Err(p);
    }
    let dir_text = dir.to_string_lossy().to_string();
    let (_, fstype, source) =
        mount_of(&dir_text, mountinfo).ok_or_else(|| format!("no mount holds {dir_text}"))?;
    if let Some(p) = grub::env_problem(&fstype, &source) {
        return Err(p);
    }
    let (point, _, boot_source) =
        mount_of("/boot", mountinfo).ok_or_else(|| "no mount holds /boot".to_string())?;
    let prefix = if point == "/" {
        "/boot".to_string()
    } else {
        "/boot"
            .strip_prefix(point.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let uuid = uuid_of(&boot_source).ok_or_else(|| {
        format!("the filesystem UUID of {boot_source} is not in /dev/disk/by-uuid")
    })?;
    Ok(GrubPlace { dir, uuid, prefix })
}

/// A filesystem's UUID, from the links udev makes.
fn uuid_of(device: &str) -> Option<String> {
    let dev = std::fs::canonicalize(device).ok()?;
    std::fs::read_dir("/dev/disk/by-uuid")
        .ok()?
        .flatten()
        .find(|e| std::fs::canonicalize(e.path()).is_ok_and(|t| t == dev))
        .map(|e| e.file_name().to_string_lossy().to_string())
}

/// Puts back what a boot-ramdisk left on a server that came back to its own system
/// (the ramdisk never reported, or was left by a reboot): the GRUB entry, a
/// `next_entry` still naming it, the ramdisk files. Returns what it removed.
pub fn clean_up(state_dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    for dir in ["/boot/grub", "/boot/grub2"].map(PathBuf::from) {
        let custom = dir.join("custom.cfg");
        if let Ok(text) = std::fs::read_to_string(&custom)
            && text.contains(grub::ENTRY_ID)
        {
            let rest = grub::with_entry(&text, None);
            let written = if rest.trim().is_empty() {
                std::fs::remove_file(&custom).map_err(anyhow::Error::from)
            } else {
                write_synced(&custom, rest.as_bytes(), 0o644)
            };
            if written.is_ok() {
                done.push(format!("the ramdisk entry in {}", custom.display()));
            }
        }
        let env = dir.join("grubenv");
        if let Ok(block) = std::fs::read(&env)
            && grub::env_vars(&block).is_ok_and(|v| {
                v.iter()
                    .any(|(k, val)| k == "next_entry" && val == grub::ENTRY_ID)
            })
            && let Ok(cleared) = grub::env_set(Some(&block), "next_entry", None)
            && write_env(&env, &cleared).is_ok()
        {
            done.push(format!("next_entry in {}", env.display()));
        }
    }
    for f in [
        Path::new("/boot").join(GRUB_RAMDISK),
        state_dir.join(STATE_RAMDISK),
    ] {
        if std::fs::remove_file(&f).is_ok() {
            done.push(f.display().to_string());
        }
    }
    done
}

/// The kernel command line the ramdisk boots with (grub-once and kexec).
pub fn kernel_cmdline(consoles: &[String]) -> String {
    let mut words: Vec<String> = consoles.to_vec();
    // A ramdisk that panics comes back to the server's own system.
    words.push("panic=10".into());
    words.join(" ")
}

/// The ramdisk's own parameters (in [`ferry_boot::cmdline::EXTRA_PATH`], so every
/// method carries them, init too).
pub fn ramdisk_params(fallback_secs: u32) -> String {
    format!("ferry.fallback={fallback_secs}\n")
}

/// The drivers half of a server's own ramdisk: the running kernel's modules picked by
/// the base's rules, and `ramdisk.json`.
pub fn drivers_layer(modules_dir: &Path, base: &BaseInfo, level: i32) -> Result<(Archive, u32)> {
    let mut a = Archive::new();
    let sel = Selection {
        rules: &base.modules,
        drivers: &DriverSet::All,
        exclude: &[],
        level,
        strict: false,
    };
    let d = ferry_initramfs::drivers::add(&mut a, modules_dir, &sel).with_context(|| {
        format!(
            "adding the running kernel's drivers from {}",
            modules_dir.display()
        )
    })?;
    let count = d.modules.len() as u32;
    let info = RamdiskInfo {
        kernel_release: d.release,
        drivers: "all (the server's own kernel)".into(),
        preload: d.preload,
        modules: d.modules.into_iter().collect(),
        excluded: Vec::new(),
        tools: base.tools.clone(),
        firmware: Vec::new(),
        watch: d.watch,
    };
    a.file(INFO_PATH, 0o644, serde_json::to_vec_pretty(&info)?)?;
    Ok((a, count))
}

/// The identity half, made when the server is about to reboot: the agent config
/// (kind ramdisk, state in the ramdisk), every file of the state folder as it is now,
/// the network, the ramdisk's parameters and how it was entered.
pub fn identity_layer(
    config: &crate::config::AgentConfig,
    state_dir: &Path,
    network: &crate::ramdisk::hostnet::HostNetwork,
    params: &str,
    entered: &Entered,
) -> Result<Archive> {
    let mut a = Archive::new();
    let mut config = config.clone();
    config.kind = Some(ferry_model::protocol::AgentKind::Ramdisk);
    config.state_dir = PathBuf::from("/").join(RAMDISK_STATE_DIR);
    a.file(
        ferry_initramfs::info::CONFIG_PATH,
        0o600,
        config.to_yaml()?.into_bytes(),
    )?;
    add_tree(&mut a, state_dir, RAMDISK_STATE_DIR)?;
    a.file(
        crate::ramdisk::hostnet::PATH,
        0o644,
        serde_json::to_vec_pretty(network)?,
    )?;
    a.file(
        ferry_boot::cmdline::EXTRA_PATH,
        0o644,
        params.as_bytes().to_vec(),
    )?;
    a.file(
        crate::ramdisk::ENTERED_PATH,
        0o644,
        serde_json::to_vec_pretty(entered)?,
    )?;
    Ok(a)
}

/// Adds the regular files under `dir` (recursively; a ramdisk left there is not) at
/// `at`, mode 600.
fn add_tree(a: &mut Archive, dir: &Path, at: &str) -> Result<()> {
    a.dir(at, 0o700)?;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let ty = e.file_type()?;
        let inside = format!("{at}/{name}");
        if ty.is_dir() {
            add_tree(a, &e.path(), &inside)?;
        } else if ty.is_file() && name != STATE_RAMDISK {
            let data = std::fs::read(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            a.file(&inside, 0o600, data)?;
        }
    }
    Ok(())
}

/// A whole ramdisk: the plain archives first (the kernel unpacks them in order and
/// each is a multiple of 4 bytes long), the compressed base last.
pub fn assemble(identity: &Archive, drivers: &[u8], base: &[u8]) -> Vec<u8> {
    let mut out = identity.to_bytes();
    out.extend_from_slice(drivers);
    out.extend_from_slice(base);
    out
}

/// SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(data))
}

/// Checks what was read from the store against the command's digest.
pub fn check_digest(what: &str, key: &str, data: &[u8], sha256: &str) -> Result<()> {
    let got = sha256_hex(data);
    ensure!(
        got.eq_ignore_ascii_case(sha256),
        "{what} {key} has SHA-256 {got}, not the {sha256} the command names; it is damaged or was replaced — publish it again (`ferry boot-ramdisk` does) and retry"
    );
    Ok(())
}

/// Everything checked and built; nothing on the server changed yet.
#[derive(Debug)]
pub struct Prepared {
    /// The method.
    pub method: BootMethod,
    /// Why that one.
    pub why: String,
    /// The running kernel's release.
    pub release: String,
    /// Its image (grub-once, kexec).
    pub kernel: Option<PathBuf>,
    /// Driver modules put in.
    pub modules: u32,
    /// The drivers archive.
    pub drivers: Vec<u8>,
    /// The base, as published.
    pub base: Vec<u8>,
    /// Where GRUB finds things (grub-once).
    pub grub: Option<GrubPlace>,
    /// The kernel command line (grub-once, kexec).
    pub cmdline: String,
    /// The ramdisk's parameters.
    pub params: String,
    /// The network the ramdisk brings up.
    pub network: crate::ramdisk::hostnet::HostNetwork,
    /// The command's id.
    pub command_id: String,
}

impl Prepared {
    /// The ramdisk's size without the identity (a few KiB).
    pub fn bytes(&self) -> u64 {
        (self.drivers.len() + self.base.len()) as u64
    }

    /// Adds the identity, installs the method and reboots. Returns only on failure,
    /// with the server's boot as it was.
    pub fn enter(&self, config: &crate::config::AgentConfig) -> Result<()> {
        let entered = Entered {
            method: self.method,
            command_id: self.command_id.clone(),
            kernel_release: self.release.clone(),
        };
        let identity = identity_layer(
            config,
            &config.state_dir,
            &self.network,
            &self.params,
            &entered,
        )?;
        let ramdisk = assemble(&identity, &self.drivers, &self.base);
        match self.method {
            BootMethod::GrubOnce => self.enter_grub_once(&ramdisk),
            BootMethod::Kexec => self.enter_kexec(&ramdisk, config),
            BootMethod::Init => shim::install(&ramdisk, &config.state_dir).inspect_err(|_| {
                shim::uninstall();
            }),
            BootMethod::Auto => bail!("auto is resolved to a method before entering"),
        }
    }

    fn enter_grub_once(&self, ramdisk: &[u8]) -> Result<()> {
        let place = self
            .grub
            .as_ref()
            .context("grub-once was chosen without GRUB's place")?;
        let kernel = self
            .kernel
            .as_ref()
            .and_then(|k| k.file_name())
            .context("grub-once was chosen without the kernel's image")?
            .to_string_lossy()
            .to_string();
        write_synced(&Path::new("/boot").join(GRUB_RAMDISK), ramdisk, 0o600)?;
        let custom_path = place.dir.join("custom.cfg");
        let custom = std::fs::read_to_string(&custom_path).unwrap_or_default();
        let part = grub::entry(
            &place.uuid,
            &place.prefix,
            &kernel,
            GRUB_RAMDISK,
            &self.cmdline,
        );
        write_synced(
            &custom_path,
            grub::with_entry(&custom, Some(&part)).as_bytes(),
            0o644,
        )?;
        let env_path = place.dir.join("grubenv");
        let old = std::fs::read(&env_path).ok();
        let env = grub::env_set(old.as_deref(), "next_entry", Some(grub::ENTRY_ID))?;
        write_env(&env_path, &env)?;
        reboot(false)
    }

    fn enter_kexec(&self, ramdisk: &[u8], config: &crate::config::AgentConfig) -> Result<()> {
        let kernel = self
            .kernel
            .as_ref()
            .context("kexec was chosen without the kernel's image")?;
        let path = config.state_dir.join(STATE_RAMDISK);
        write_synced(&path, ramdisk, 0o600)?;
        kexec_load(kernel, &path, &self.cmdline)?;
        reboot(true)
    }
}

/// Writes GRUB's environment block as `grub-editenv` does: over the old block in
/// place when it has the same size (the file GRUB itself writes at boot keeps its
/// blocks), else as a new file; synced either way.
fn write_env(path: &Path, block: &[u8]) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let same_size = std::fs::metadata(path).is_ok_and(|m| m.len() == block.len() as u64);
    if !same_size {
        return write_synced(path, block, 0o644);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all_at(block, 0)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes a file through a temporary name, synced, renamed over the old one, and the
/// rename made lasting (a reboot follows).
pub fn write_synced(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    ferry_mailbox::store::folder::write_atomic(path, data, mode)
        .with_context(|| format!("writing {}", path.display()))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Loads a kernel and ramdisk for `kexec`.
fn kexec_load(kernel: &Path, ramdisk: &Path, cmdline: &str) -> Result<()> {
    let k = std::fs::File::open(kernel).with_context(|| format!("opening {}", kernel.display()))?;
    let r =
        std::fs::File::open(ramdisk).with_context(|| format!("opening {}", ramdisk.display()))?;
    crate::ramdisk::sys::kexec_file_load(&k, &r, cmdline)
        .with_context(|| format!("the kernel refused to load {} for kexec", kernel.display()))
}

/// Reboots the server (into the loaded kernel with `kexec`) the way its init does, so
/// services stop cleanly; without systemd, directly.
fn reboot(kexec: bool) -> Result<()> {
    let verb = if kexec { "kexec" } else { "reboot" };
    // What the boot loader reads must be on the disk whatever the shutdown does.
    nix::unistd::sync();
    let systemd = Path::new("/run/systemd/system").exists();
    if systemd {
        // Queued, not waited for: the shutdown it starts stops this agent's service,
        // and would kill a `systemctl` still waiting.
        let status = std::process::Command::new("systemctl")
            .args(["--no-block", verb])
            .status()
            .with_context(|| format!("running systemctl {verb}"))?;
        // Killed by a signal, it was the shutdown it had already queued that stopped
        // this agent's service and everything in it: the reboot is under way, and
        // undoing the entry now would send the server back to its own system.
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            tracing::info!("systemctl {verb} was ended by signal {signal}: the shutdown has begun");
            return Ok(());
        }
        ensure!(status.success(), "systemctl {verb} failed ({status})");
        return Ok(());
    }
    let e = crate::ramdisk::sys::power_by(if kexec {
        nix::sys::reboot::RebootMode::RB_KEXEC
    } else {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    });
    bail!("the kernel refused to {verb}: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment block is written over the old one in place (same inode, as
    /// grub-editenv does); a block of another size replaces the file.
    #[test]
    fn the_environment_block_is_written_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let env = dir.path().join("grubenv");
        let old = grub::env_set(None, "saved_entry", Some("0")).expect("block");
        std::fs::write(&env, &old).expect("write");
        let ino = std::fs::metadata(&env).expect("meta").ino();
        let new = grub::env_set(Some(&old), "next_entry", Some(grub::ENTRY_ID)).expect("set");
        write_env(&env, &new).expect("written");
        assert_eq!(std::fs::metadata(&env).expect("meta").ino(), ino);
        assert_eq!(std::fs::read(&env).expect("read"), new);
        write_env(&env, b"short").expect("written");
        assert_eq!(std::fs::read(&env).expect("read"), b"short");
    }

    fn cloud() -> Facts {
        Facts {
            release: "6.1.0-41-cloud-amd64".into(),
            kernel: Some("/boot/vmlinuz-6.1.0-41-cloud-amd64".into()),
            kernel_problem: None,
            boot_loader_started: true,
            grub: Ok(GrubPlace {
                dir: "/boot/grub".into(),
                uuid: "f00d".into(),
                prefix: "/boot".into(),
            }),
            kexec_problem: None,
            init_problem: None,
            boot_free: 1 << 30,
            state_free: 1 << 30,
            mem_available: 2 << 30,
            consoles: vec!["console=ttyS0,115200".into()],
        }
    }

    const RAMDISK: u64 = 40 << 20;

    #[test]
    fn auto_takes_the_safest_method_that_works_and_says_why() {
        let f = cloud();
        let (m, why) = choose(BootMethod::Auto, &f, RAMDISK).unwrap();
        assert_eq!(
            (m, why.as_str()),
            (
                BootMethod::GrubOnce,
                "grub-once: the safest method that works here"
            )
        );

        let f = Facts {
            boot_free: 30 << 20,
            ..cloud()
        };
        let (m, why) = choose(BootMethod::Auto, &f, RAMDISK).unwrap();
        assert_eq!(m, BootMethod::Kexec);
        assert!(
            why.contains("not grub-once: /boot has 30 MiB free and the ramdisk needs 56 MiB"),
            "{why}"
        );

        // A hypervisor's direct kernel boot: GRUB may be installed, but it is not used.
        let f = Facts {
            boot_loader_started: false,
            kexec_problem: Some("kexec is disabled (kernel.kexec_load_disabled = 1)".into()),
            ..cloud()
        };
        let (m, why) = choose(BootMethod::Auto, &f, RAMDISK).unwrap();
        assert_eq!(m, BootMethod::Init);
        assert!(
            why.contains("no boot loader started this kernel")
                && why.contains("kexec_load_disabled"),
            "{why}"
        );
    }

    #[test]
    fn a_method_asked_for_is_used_or_refused_with_the_reason() {
        let f = Facts {
            grub: Err("GRUB's folder is on xfs, where GRUB cannot write its environment block at boot, so a once-only entry would stay".into()),
            ..cloud()
        };
        let err = choose(BootMethod::GrubOnce, &f, RAMDISK)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("grub-once cannot be used here: GRUB's folder is on xfs"),
            "{err}"
        );
        assert_eq!(
            choose(BootMethod::Kexec, &f, RAMDISK).unwrap().0,
            BootMethod::Kexec
        );
        let f = Facts {
            mem_available: 200 << 20,
            ..cloud()
        };
        let err = choose(BootMethod::Kexec, &f, RAMDISK)
            .unwrap_err()
            .to_string();
        assert!(err.contains("200 MiB of memory are available"), "{err}");
        let f = Facts {
            kernel_problem: Some(
                "kernel 4.18.0 cannot unpack a zstd ramdisk (CONFIG_RD_ZSTD is not set)".into(),
            ),
            ..cloud()
        };
        let err = choose(BootMethod::Auto, &f, RAMDISK)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_RD_ZSTD"), "{err}");
        let f = Facts {
            boot_loader_started: false,
            kexec_problem: Some("disabled".into()),
            init_problem: Some("/sbin/init is missing".into()),
            ..cloud()
        };
        let err = choose(BootMethod::Auto, &f, RAMDISK)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no way into the ramdisk works here: not grub-once"),
            "{err}"
        );
    }

    #[test]
    fn the_server_ramdisk_carries_identity_state_network_and_parameters() {
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join("agent-id"), "abc\n").unwrap();
        std::fs::write(state.path().join("state.json"), "{\"last_seq\":9}").unwrap();
        std::fs::create_dir(state.path().join("spool")).unwrap();
        std::fs::write(state.path().join("spool/1.json"), "{}").unwrap();
        std::fs::write(state.path().join(STATE_RAMDISK), vec![0; 1000]).unwrap();
        let config = crate::config::AgentConfig {
            store: ferry_mailbox::store::StoreConfig {
                url: "https://10.0.2.2:7443/ferry".into(),
                ..Default::default()
            },
            manager_key: ferry_mailbox::seal::KeyPair::generate().sign_public(),
            state_dir: state.path().into(),
            heartbeat_secs: 30.0,
            poll_secs: 5.0,
            kind: None,
        };
        let entered = Entered {
            method: BootMethod::Kexec,
            command_id: "c-1".into(),
            kernel_release: "6.1.0-41-amd64".into(),
        };
        let a = identity_layer(
            &config,
            state.path(),
            &Default::default(),
            &ramdisk_params(600),
            &entered,
        )
        .unwrap();
        assert!(a.contains("var/lib/ferry-agent/agent-id"));
        assert!(a.contains("var/lib/ferry-agent/spool/1.json"));
        assert!(!a.contains("var/lib/ferry-agent/ramdisk.img"));
        let Some(ferry_initramfs::cpio::Entry::File { data, .. }) = a.get("etc/ferry/agent.yaml")
        else {
            panic!("no config");
        };
        let text = String::from_utf8_lossy(data);
        let back = crate::config::AgentConfig::parse(&text).unwrap();
        assert_eq!(back.kind, Some(ferry_model::protocol::AgentKind::Ramdisk));
        assert_eq!(back.state_dir, Path::new("/var/lib/ferry-agent"));
        assert!(
            matches!(a.get(ferry_boot::cmdline::EXTRA_PATH), Some(ferry_initramfs::cpio::Entry::File { data, .. }) if data == b"ferry.fallback=600\n")
        );
        // Plain archives first, each a multiple of 4 bytes, the compressed base last.
        let whole = assemble(&a, &Archive::new().to_bytes(), &[0x28, 0xb5, 0x2f, 0xfd]);
        assert!(whole.starts_with(b"070701") && whole.ends_with(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert_eq!((whole.len() - 4) % 4, 0);
    }

    #[test]
    fn mounts_and_kernel_configs_are_read_as_the_kernel_writes_them() {
        // Recorded on a Debian 12 VM with /boot on its own partition.
        let info = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=1000k
40 22 254:2 / /boot rw,relatime shared:20 - ext4 /dev/vda2 rw
41 40 254:3 / /boot/efi rw,relatime shared:21 - vfat /dev/vda3 rw
";
        assert_eq!(
            mount_of("/boot/grub", info),
            Some(("/boot".into(), "ext4".into(), "/dev/vda2".into()))
        );
        assert_eq!(
            mount_of("/boot/efi/EFI", info),
            Some(("/boot/efi".into(), "vfat".into(), "/dev/vda3".into()))
        );
        assert_eq!(mount_of("/bootstrap", info).unwrap().0, "/");
        assert_eq!(
            zstd_problem("6.1.0", "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_ZSTD=y\n"),
            None
        );
        let old = zstd_problem("4.18.0", "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_XZ=y\n").unwrap();
        assert!(
            old.contains("CONFIG_RD_ZSTD is not set") && old.contains("PXE or ISO"),
            "{old}"
        );
    }

    #[test]
    fn a_damaged_base_is_named_with_what_to_do() {
        let data = b"base";
        check_digest(
            "ramdisk base",
            "boot/x/initrd-base.zst",
            data,
            &sha256_hex(data),
        )
        .unwrap();
        let err = check_digest(
            "ramdisk base",
            "boot/x/initrd-base.zst",
            b"other",
            &sha256_hex(data),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("boot/x/initrd-base.zst has SHA-256") && err.contains("publish it again"),
            "{err}"
        );
    }
}
