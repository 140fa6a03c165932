//! A "cloud server" and `ferry boot-ramdisk`, as the reboot suite and `cargo xtask
//! bench reboot` use them: the web server ([`crate::debian::web_source_disk`]: static
//! addressing, GRUB made like grub-mkconfig, the installed agent) started by BIOS, by
//! UEFI, or by QEMU's direct kernel boot with no boot loader, as clouds start theirs;
//! its agent swaps its boot to the Ferry ramdisk, which comes up as the same agent,
//! kind ramdisk, on the server's own kernel and network.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferry_model::survey::Survey;
use serde_json::Value;

use crate::debian::{WEB_MAC, WEB_ROOT_UUID, kernel_version, root_tree};
use crate::vm::{Manager, Qemu, machine_args};
use crate::webmove::{Firmware, web_server_args};

/// The cloud server's SMBIOS UUID: the manager knows the ramdisk is the same machine.
pub const UUID: &str = "5e1f0c2a-7d3b-4c8e-9a6f-00000000c10d";

/// How the cloud server starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Firmware, then GRUB from the disk.
    Firmware(Firmware),
    /// QEMU loads the server's kernel and initrd itself (no boot loader runs).
    DirectKernel,
}

impl Start {
    /// A name for folders and tables.
    pub fn name(self) -> &'static str {
        match self {
            Start::Firmware(Firmware::Bios) => "bios",
            Start::Firmware(Firmware::Uefi) => "uefi",
            Start::DirectKernel => "direct",
        }
    }
}

/// The cloud server running: its VM, agent id and first survey.
pub struct Server {
    /// The VM.
    pub vm: Qemu,
    /// Its installed agent.
    pub id: String,
    /// The installed agent's survey.
    pub survey: Survey,
    /// Its kernel release.
    pub kernel: String,
}

/// Starts the cloud server in `dir` and waits for its installed agent's survey. The
/// guest may reboot (no `-no-reboot`); its disk's writes live as long as the VM.
pub async fn start(m: &Manager, dir: &Path, start: Start) -> Result<Server> {
    std::fs::create_dir_all(dir)?;
    let cd = m.agent_cd(dir)?;
    let console = dir.join("console.log");
    let mut args: Vec<String> = machine_args(1, &console)
        .into_iter()
        .filter(|a| a != "-no-reboot")
        .collect();
    let root = root_tree()?;
    let kernel = kernel_version(&root)?;
    match start {
        Start::Firmware(f) => args.extend(f.args(dir)?),
        Start::DirectKernel => args.extend(direct_kernel(&root, &kernel)),
    }
    args.extend(["-uuid".into(), UUID.into()]);
    args.extend(web_server_args(&cd)?);
    let mut vm = Qemu::start(dir, &console, &args, None)?;
    let (id, survey) = m
        .wait_survey(&mut vm, "installed", Duration::from_secs(600), |s| {
            s.hostname == "ferry-web" && !s.os.network.interfaces.is_empty()
        })
        .await
        .context("the cloud server's agent")?;
    Ok(Server {
        vm,
        id,
        survey,
        kernel,
    })
}

/// QEMU options starting the server's own kernel and initrd with no boot loader.
fn direct_kernel(root: &Path, version: &str) -> Vec<String> {
    let boot = |f: &str| -> String { root.join("boot").join(f).to_string_lossy().into() };
    vec![
        "-kernel".into(),
        boot(&format!("vmlinuz-{version}")),
        "-initrd".into(),
        boot(&format!("initrd.img-{version}")),
        "-append".into(),
        format!("root=UUID={WEB_ROOT_UUID} ro console=ttyS0,115200 net.ifnames=0 panic=30"),
    ]
}

/// What `ferry boot-ramdisk --json` said, and when the ramdisk agent reported.
#[derive(Debug, Clone)]
pub struct Entered {
    /// The command's JSON answer.
    pub outcome: Value,
    /// Seconds from the command to the ramdisk agent's status.
    pub secs: f64,
    /// The ramdisk agent's view (`ferry agent show --json`).
    pub view: Value,
}

/// Runs `ferry boot-ramdisk` with `method` and checks the ramdisk came up as the same
/// machine: same agent, kind ramdisk, the server's kernel, its network by its own
/// static configuration.
pub async fn enter(m: &Manager, s: &Server, method: &str) -> Result<Entered> {
    let started = Instant::now();
    let out = m.ferry(&[
        "boot-ramdisk",
        &s.id,
        "--method",
        method,
        "--fallback",
        "600",
        "--wait",
        "600",
        "--json",
    ])?;
    let secs = started.elapsed().as_secs_f64();
    let outcome: Value = serde_json::from_str(&out).context("ferry boot-ramdisk --json")?;
    ensure!(outcome["method"] == method, "the method used: {outcome}");
    Ok(Entered {
        outcome,
        secs,
        view: in_ramdisk(m, s, method)?,
    })
}

/// Checks the server runs its ramdisk, entered by `method`, as the same machine: same
/// agent, kind ramdisk, the server's kernel, its network by its own static
/// configuration, its disk held by nothing; the ramdisk agent's view.
pub fn in_ramdisk(m: &Manager, s: &Server, method: &str) -> Result<Value> {
    let view: Value = serde_json::from_str(&m.ferry(&["agent", "show", &s.id, "--json"])?)?;
    let status = &view["status"];
    ensure!(status["kind"] == "ramdisk", "not the ramdisk: {status}");
    let survey: Survey = serde_json::from_value(status["survey"].clone())?;
    ensure!(
        survey.kernel == s.kernel,
        "the ramdisk runs kernel {}, not the server's {}",
        survey.kernel,
        s.kernel
    );
    ensure!(
        survey.hardware.system.uuid.as_deref() == Some(UUID)
            && s.survey.hardware.system.uuid.as_deref() == Some(UUID)
            && survey.nics.iter().any(|n| n.mac == WEB_MAC),
        "not the same machine: {:?} {:?}",
        survey.hardware.system,
        survey.nics
    );
    // The server's root disk: held by its own system, let go of by the ramdisk (a
    // deploy onto it would be refused otherwise).
    let root_disk = s
        .survey
        .disks
        .iter()
        .find(|d| {
            d.in_use
                .iter()
                .any(|u| u.ends_with(" is mounted at /") || u.contains(" is mounted at /, "))
        })
        .with_context(|| format!("no disk of the server holds its root: {:?}", s.survey.disks))?;
    let freed = survey.disks.iter().find(|d| d.name == root_disk.name);
    ensure!(
        freed.is_some_and(|d| d.in_use.is_empty()),
        "the ramdisk still holds the server's disk {}: {freed:?}",
        root_disk.name
    );
    let network = status["boot"]["network"].as_str().unwrap_or_default();
    ensure!(
        network.starts_with("server ") && network.contains("10.0.2.15/24"),
        "the ramdisk's network did not come from the server's own configuration: {network}"
    );
    ensure!(
        status["boot"]["entered"]["method"] == method,
        "the ramdisk does not say it was entered by {method}: {}",
        status["boot"]
    );
    Ok(view)
}

/// A ramdisk base whose `/init` is no program, with the real base's build
/// information: the kernel finds no init, panics and (`panic=10`) reboots.
pub fn broken_base(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut a = ferry_initramfs::cpio::Archive::new();
    a.file("init", 0o755, b"this is not a program\n".to_vec())?;
    let bytes = zstd::bulk::compress(&a.to_bytes(), 3)?;
    std::fs::write(dir.join(ferry_boot::INITRD_BASE), bytes)?;
    std::fs::copy(
        crate::vm::ramdisk_dir().join(ferry_boot::INITRD_BASE_INFO),
        dir.join(ferry_boot::INITRD_BASE_INFO),
    )
    .context("the built ramdisk's initrd-base.json (cargo xtask ramdisk)")?;
    Ok(dir.to_path_buf())
}
