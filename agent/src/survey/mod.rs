//! The survey: what this machine is, read from the kernel's own views (/proc, /sys,
//! ioctls), from configuration files, and from tools in their machine-readable modes
//! (`lsblk -J`, `ip -j`). Works on an installed Linux and inside the ramdisk (no udev,
//! no systemd, no dpkg there).
//!
//! Every reader takes a [`Host`]: the root it reads files under (a fixture tree in
//! tests) and the way it runs tools. A fact that cannot be learned leaves its field
//! empty and a [`Gap`] that says why; the survey itself never fails.

pub mod apps;
pub mod holds;
pub mod hw;
pub mod net;
pub mod os;
pub mod rpmdb;
pub mod storage;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use ferry_model::protocol::Fingerprint;
use ferry_model::survey::{Gap, Survey};

/// Runs a tool: its standard output, or why it could not.
pub type RunTool = dyn Fn(&str, &[&str]) -> Result<String, String> + Send + Sync;

/// Where the survey looks.
pub struct Host {
    /// The root of the filesystem tree read (`/` on a live machine).
    pub root: PathBuf,
    run: Arc<RunTool>,
}

/// Folders searched for tools, whatever `PATH` the agent was started with.
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

fn run_system_tool(name: &str, args: &[&str]) -> Result<String, String> {
    let Some(path) = TOOL_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
    else {
        return Err(format!("{name}: not installed"));
    };
    let out = Command::new(&path)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("{name}: {e}"))?;
    if !out.status.success() {
        // The command line and the end of what it said, where the cause usually is.
        let err = String::from_utf8_lossy(&out.stderr);
        let said: Vec<&str> = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Err(format!(
            "{name} {}: {} {}",
            args.join(" "),
            out.status,
            said[said.len().saturating_sub(5)..].join(" | ")
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("{name}: output is not UTF-8"))
}

impl Host {
    /// This machine.
    pub fn live() -> Host {
        Host {
            root: PathBuf::from("/"),
            run: Arc::new(run_system_tool),
        }
    }

    /// A tree under `root` and a tool runner (tests).
    pub fn new(root: impl Into<PathBuf>, run: Box<RunTool>) -> Host {
        Host {
            root: root.into(),
            run: Arc::from(run),
        }
    }

    /// The tool runner, for work that outlives a borrow of this host.
    pub fn runner(&self) -> Arc<RunTool> {
        self.run.clone()
    }

    /// An absolute path of the surveyed machine, under this host's root.
    pub fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    /// A file's text, trimmed; `None` when absent, unreadable or empty.
    pub fn read(&self, p: &str) -> Option<String> {
        read_trim(self.path(p))
    }

    /// A file's whole text.
    pub fn read_raw(&self, p: &str) -> std::io::Result<String> {
        fs::read_to_string(self.path(p))
    }

    /// Names in a folder, sorted; empty when it does not exist.
    pub fn list(&self, p: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(p))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }

    /// Whether a path exists.
    pub fn exists(&self, p: &str) -> bool {
        self.path(p).exists()
    }

    /// The last component a symlink points to (e.g. a device's driver).
    pub fn link_name(&self, p: &str) -> Option<String> {
        fs::read_link(self.path(p))
            .ok()?
            .file_name()?
            .to_str()
            .map(str::to_string)
    }

    /// A symlink's target as text.
    pub fn link(&self, p: &str) -> Option<String> {
        fs::read_link(self.path(p))
            .ok()
            .map(|t| t.to_string_lossy().to_string())
    }

    /// Runs a tool of the surveyed machine.
    pub fn tool(&self, name: &str, args: &[&str]) -> Result<String, String> {
        (self.run)(name, args)
    }
}

/// Collects what could not be learned.
#[derive(Default)]
pub struct Gaps(pub Vec<Gap>);

impl Gaps {
    /// Notes that `what` is unknown because `why`.
    pub fn note(&mut self, what: &str, why: impl Into<String>) {
        self.0.push(Gap {
            what: what.to_string(),
            why: why.into(),
        });
    }
}

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The short inventory taken before the agent's first heartbeat: identity facts only
/// (host name, kernel, CPUs, memory, disks, NICs).
pub fn quick(host: &Host) -> Survey {
    Survey {
        hostname: host.read("/proc/sys/kernel/hostname").unwrap_or_default(),
        kernel: host.read("/proc/sys/kernel/osrelease").unwrap_or_default(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        memory_bytes: memory_bytes(host).unwrap_or(0),
        disks: hw::disks(host),
        nics: hw::nics(host),
        ..Default::default()
    }
}

/// The full survey of `host`.
pub fn full(host: &Host) -> Survey {
    let started = Instant::now();
    let mut gaps = Gaps::default();
    let mut s = quick(host);
    s.hardware = hw::hardware(host, &mut gaps);
    s.cpus = s.cpus.max(s.hardware.cpu.threads);
    s.os = os::os(host, &mut gaps);
    s.os.storage = storage::storage(host, &mut gaps);
    s.os.network = net::network(host, &mut gaps);
    s.apps = apps::apps(host, &mut gaps);
    s.gaps = gaps.0;
    s.took_ms = started.elapsed().as_millis() as u64;
    s
}

/// The full survey of this machine.
pub fn survey() -> Survey {
    full(&Host::live())
}

/// The last full survey taken in this process, and when.
static LAST: std::sync::Mutex<Option<(Instant, Survey)>> = std::sync::Mutex::new(None);

/// The full survey of this machine, reused when one was taken in this process less
/// than `max_age` ago (agents sharing a process, as in the benches, survey once).
pub fn survey_within(max_age: std::time::Duration) -> Survey {
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, s)) = last.as_ref()
        && at.elapsed() < max_age
    {
        return s.clone();
    }
    let s = survey();
    *last = Some((Instant::now(), s.clone()));
    s
}

fn memory_bytes(host: &Host) -> Option<u64> {
    let text = host.read_raw("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
pub(crate) mod testing {
    use super::*;
    use std::collections::HashMap;

    /// A fixture host: files under a temporary root and recorded tool outputs keyed
    /// by `"tool arg arg"`; any other tool is "not installed".
    pub fn host(root: &Path, tools: &[(&str, &str)]) -> Host {
        let outputs: HashMap<String, String> = tools
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Host::new(
            root,
            Box::new(move |name, args| {
                let key = std::iter::once(name)
                    .chain(args.iter().copied())
                    .collect::<Vec<_>>()
                    .join(" ");
                outputs
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| format!("{name}: not installed"))
            }),
        )
    }

    /// Writes `text` to `root/p`, making folders.
    pub fn put(root: &Path, p: &str, text: &str) {
        let path = root.join(p.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    /// A recorded fixture from `agent/tests/fixtures/survey/`.
    pub fn fixture(name: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/survey")
            .join(name);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        // The first line names the command that recorded it.
        assert!(text.starts_with("# recorded with: "), "{name}");
        text.split_once('\n').map(|x| x.1).unwrap_or("").to_string()
    }
}
