//! The QEMU provider: each machine is a `qemu-system-x86_64` that runs on its own
//! (daemonized, so it outlives the manager replica that started it), with its disks,
//! UEFI variables, console log, QMP socket and pid file in `DIR/NAME/`. Its first
//! start boots Ferry's ramdisk by iPXE from the manager's boot server over QEMU's user
//! network (or from a CD made for this manager); later starts boot from its disks.
//!
//! `netns` runs QEMU inside a network namespace: the hypervisor host of another data
//! centre, whose machines reach the store and the boot server only by connecting out.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use ferry_model::machine::{BootFrom, Machine, MachineFirmware, MachineSpec};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing::warn;

use super::{MachineStatus, PowerAction, Provider};
use crate::config::ManagerConfig;

/// Settings of a QEMU provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// Folder of the machines (relative paths are from the config's folder).
    pub dir: PathBuf,
    /// Network namespace to run QEMU in (`ip netns exec`), if not the manager's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The QEMU program.
    #[serde(default = "default_binary")]
    pub binary: PathBuf,
    /// Accelerators in order of preference (`-machine accel=`).
    #[serde(default = "default_accel")]
    pub accel: String,
    /// OVMF code for UEFI machines.
    #[serde(default = "default_ovmf_code")]
    pub ovmf_code: PathBuf,
    /// OVMF variables template for UEFI machines (copied per machine).
    #[serde(default = "default_ovmf_vars")]
    pub ovmf_vars: PathBuf,
    /// Base URL of the boot server as machines reach it, ending in `/`; default: the
    /// manager's boot server's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_url: Option<String>,
}

fn default_binary() -> PathBuf {
    "qemu-system-x86_64".into()
}
fn default_accel() -> String {
    "kvm:tcg".into()
}
fn default_ovmf_code() -> PathBuf {
    "/usr/share/OVMF/OVMF_CODE_4M.fd".into()
}
fn default_ovmf_vars() -> PathBuf {
    "/usr/share/OVMF/OVMF_VARS_4M.fd".into()
}

/// A machine's serial console, appended to at every start, in its folder.
const CONSOLE: &str = "console.log";

/// `DIR/NAME/machine.json`: what a machine was made to, and how it is started.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: MachineSpec,
    /// QEMU's arguments for every start.
    args: Vec<String>,
    /// Added for the first start only (the ramdisk boot).
    first: Vec<String>,
}

/// A QEMU provider.
#[derive(Debug, Clone)]
pub struct Qemu {
    name: String,
    config: QemuConfig,
    manager: ManagerConfig,
}

impl Qemu {
    /// Provider `name` with its settings, for `manager`.
    pub fn new(name: &str, config: QemuConfig, manager: ManagerConfig) -> Qemu {
        Qemu {
            name: name.to_string(),
            config,
            manager,
        }
    }

    fn machine_dir(&self, name: &str) -> Result<PathBuf> {
        ferry_model::protocol::check_object_id(name)
            .map_err(|e| anyhow::anyhow!("machine name {name:?}: {e}"))?;
        Ok(self.config.dir.join(name))
    }

    fn machine(&self, name: &str, spec: &MachineSpec, created: bool) -> Machine {
        Machine {
            provider: self.name.clone(),
            name: name.to_string(),
            macs: spec.macs(),
            created,
            console: Some(
                self.config
                    .dir
                    .join(name)
                    .join(CONSOLE)
                    .to_string_lossy()
                    .into(),
            ),
        }
    }

    fn record(dir: &Path) -> Result<Option<Record>> {
        let path = dir.join("machine.json");
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is not a machine record; remove the folder to make the machine again",
                    path.display()
                )
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Every start's arguments for machine `name` in `dir`, and the first start's.
    fn args(
        &self,
        name: &str,
        dir: &Path,
        spec: &MachineSpec,
    ) -> Result<(Vec<String>, Vec<String>)> {
        // In QEMU's option lists a comma separates options; a doubled one is a comma.
        let path = |p: &Path| p.to_string_lossy().replace(',', ",,");
        let sock = dir.join("qmp.sock");
        ensure!(
            sock.as_os_str().len() < 108,
            "machine {name}: {} is too long for a Unix socket; give the provider a shorter dir",
            sock.display()
        );
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("ferry-{name}"),
            "-machine".into(),
            format!("accel={}", self.config.accel),
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            spec.cpus.to_string(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-chardev".into(),
            format!(
                "file,id=console,path={},append=on",
                path(&dir.join(CONSOLE))
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", path(&sock)),
            "-pidfile".into(),
            dir.join("qemu.pid").to_string_lossy().into(),
            "-daemonize".into(),
        ];
        if spec.firmware == MachineFirmware::Uefi {
            args.extend([
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,readonly=on,file={}",
                    path(&self.config.ovmf_code)
                ),
                "-drive".into(),
                format!(
                    "if=pflash,format=raw,file={}",
                    path(&dir.join("ovmf-vars.fd"))
                ),
            ]);
        }
        for i in 0..spec.disks.len() {
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=virtio,format=qcow2",
                    path(&dir.join(format!("disk{i}.qcow2")))
                ),
            ]);
        }
        let mut first = Vec::new();
        for (i, nic) in spec.nics.iter().enumerate() {
            let mut netdev = format!("user,id=n{i}");
            if i == 0 && spec.boot == BootFrom::Pxe {
                let url = self.boot_url()?.replace(',', ",,");
                netdev.push_str(&format!(",bootfile={url}boot.ipxe"));
            }
            for f in &nic.forwards {
                netdev.push_str(&format!(",hostfwd={f}"));
            }
            args.extend([
                "-netdev".into(),
                netdev,
                "-device".into(),
                format!(
                    "virtio-net-pci,netdev=n{i},mac={}",
                    nic.mac.to_ascii_lowercase()
                ),
            ]);
        }
        match spec.boot {
            BootFrom::Pxe => first.extend(["-boot".into(), "once=n".into()]),
            BootFrom::Iso => first.extend([
                "-cdrom".into(),
                path(&dir.join("ferry.iso")),
                "-boot".into(),
                "once=d".into(),
            ]),
        }
        Ok((args, first))
    }

    fn boot_url(&self) -> Result<String> {
        let url = match (&self.config.boot_url, &self.manager.boot) {
            (Some(url), _) => url.clone(),
            (None, Some(boot)) => boot.url.clone(),
            (None, None) => bail!(
                "provider {} boots machines from the network, and the manager runs no boot \
                 server: give `ferry init` --boot-listen/--boot-dir/--boot-url, or the \
                 provider a boot_url",
                self.name
            ),
        };
        Ok(if url.ends_with('/') { url } else { url + "/" })
    }

    /// A CD with the ramdisk and this manager's agent config, at `iso`.
    fn make_iso(&self, iso: &Path) -> Result<()> {
        let boot = self.manager.boot.as_ref().with_context(|| {
            format!(
                "provider {} boots machines from a CD, made from the boot server's folder, and \
                 the manager has no boot server configured",
                self.name
            )
        })?;
        let initrd = boot.dir.join(ferry_boot::INITRD);
        let base = std::fs::read(&initrd).with_context(|| {
            format!(
                "reading ramdisk {} (build it with `cargo xtask ramdisk`)",
                initrd.display()
            )
        })?;
        let personal = iso.with_extension("initrd");
        std::fs::write(
            &personal,
            crate::bootserver::personalised_initrd(&self.manager, &base)?,
        )
        .with_context(|| format!("writing {}", personal.display()))?;
        let made = ferry_boot::iso::make_iso(
            iso,
            &boot.dir.join(ferry_boot::KERNEL),
            &personal,
            &boot.append,
        )
        .with_context(|| format!("making the CD {} (needs grub-mkrescue)", iso.display()));
        let _ = std::fs::remove_file(&personal);
        made
    }

    /// Runs QEMU with `args` for the machine in `dir` (not running); it daemonizes
    /// once the machine is set up. Call with the machine's lock held.
    fn start(&self, dir: &Path, args: &[String]) -> Result<()> {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        if let Some(pid) = machine_pid(dir) {
            bail!("machine {name} runs already (QEMU pid {pid})");
        }
        let _ = std::fs::remove_file(dir.join("qemu.pid"));
        let _ = std::fs::remove_file(dir.join("qmp.sock"));
        let mut cmd = match &self.config.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.config.binary);
                c
            }
            None => Command::new(&self.config.binary),
        };
        let out = cmd.args(args).output().with_context(|| {
            format!(
                "running {} (Debian: apt-get install qemu-system-x86)",
                self.config.binary.display()
            )
        })?;
        ensure!(
            out.status.success(),
            "QEMU did not start machine {name}: {} (its console: {})",
            String::from_utf8_lossy(&out.stderr).trim(),
            dir.join(CONSOLE).display()
        );
        Ok(())
    }

    /// Takes the lock of the machine in `dir`: replicas on this host change a machine
    /// one at a time. Released when the file is dropped.
    fn lock(dir: &Path) -> Result<File> {
        let path = dir.join(".lock");
        let lock = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(lock)
    }

    fn ensure_blocking(&self, name: &str, spec: &MachineSpec) -> Result<Machine> {
        let problems = spec.problems();
        ensure!(
            problems.is_empty(),
            "machine {name}: {}",
            problems.join("; ")
        );
        let dir = self.machine_dir(name)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let _lock = Self::lock(&dir)?;
        if let Some(record) = Self::record(&dir)? {
            ensure!(
                record.spec == *spec,
                "provider {} already has a machine {name} made to another spec; delete it \
                 (`ferry machine delete {name}`) or use another name",
                self.name
            );
            // Made by a replica that stopped before starting it: start it now.
            if !dir.join(CONSOLE).exists() {
                let all: Vec<String> = record.args.iter().chain(&record.first).cloned().collect();
                self.start(&dir, &all)?;
            }
            return Ok(self.machine(name, spec, false));
        }
        if let Some(pid) = machine_pid(&dir) {
            bail!(
                "machine {name} has a QEMU (pid {pid}) but no record; end it (`kill {pid}`) \
                 and retry the job"
            );
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            let file = dir.join(format!("disk{i}.qcow2"));
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&file)
                .arg(format!("{}G", disk.size_gib))
                .output()
                .context("running qemu-img (Debian: apt-get install qemu-utils)")?;
            ensure!(
                out.status.success(),
                "qemu-img create {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if spec.firmware == MachineFirmware::Uefi {
            std::fs::copy(&self.config.ovmf_vars, dir.join("ovmf-vars.fd")).with_context(|| {
                format!(
                    "copying UEFI variables {} (Debian: apt-get install ovmf)",
                    self.config.ovmf_vars.display()
                )
            })?;
        }
        if spec.boot == BootFrom::Iso {
            self.make_iso(&dir.join("ferry.iso"))?;
        }
        let (args, first) = self.args(name, &dir, spec)?;
        // The record first: a replica that stops after starting QEMU leaves a machine
        // the next one finds rather than makes again.
        let record = Record {
            spec: spec.clone(),
            args,
            first,
        };
        let record_path = dir.join("machine.json");
        ferry_mailbox::store::folder::write_atomic(
            &record_path,
            &serde_json::to_vec_pretty(&record)?,
            0o644,
        )
        .with_context(|| format!("writing {}", record_path.display()))?;
        let all: Vec<String> = record.args.iter().chain(&record.first).cloned().collect();
        if let Err(e) = self.start(&dir, &all) {
            let _ = std::fs::remove_file(&record_path);
            return Err(e);
        }
        Ok(self.machine(name, spec, true))
    }

    fn existing(&self, name: &str) -> Result<(PathBuf, Record)> {
        let dir = self.machine_dir(name)?;
        let record = Self::record(&dir)?.with_context(|| {
            format!(
                "provider {} has no machine {name}; `ferry machines` lists them",
                self.name
            )
        })?;
        Ok((dir, record))
    }
}

/// The pid of the QEMU of the machine in folder `dir`, while it runs.
pub fn machine_pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("qemu.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let wanted = dir.join("qmp.sock");
    String::from_utf8_lossy(&cmdline)
        .contains(&*wanted.to_string_lossy())
        .then_some(pid)
}

/// How long a QMP exchange may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `command` over machine `dir`'s QMP socket and waits for its answer.
async fn qmp(dir: &Path, command: &str) -> Result<()> {
    let sock = dir.join("qmp.sock");
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(&sock)
            .await
            .with_context(|| format!("connecting to QEMU's QMP socket {}", sock.display()))?;
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = lines.next_line().await?.unwrap_or_default();
        ensure!(
            greeting.contains("\"QMP\""),
            "{} did not greet as QMP: {greeting:?}",
            sock.display()
        );
        for execute in ["qmp_capabilities", command] {
            write
                .write_all(format!("{{\"execute\":\"{execute}\"}}\n").as_bytes())
                .await?;
            loop {
                let Some(line) = lines.next_line().await? else {
                    // `quit` may close the socket before its answer.
                    ensure!(execute == "quit", "QEMU closed QMP during {execute}");
                    return Ok(());
                };
                let Ok(reply) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(error) = reply.get("error") {
                    bail!("QEMU refused {execute}: {error}");
                }
                if reply.get("return").is_some() {
                    break; // events are skipped
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(QMP_TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!(
                "QEMU did not answer {command} on {} within {QMP_TIMEOUT:?}",
                sock.display()
            )
        })?
}

/// Switches the machine in `dir` off: `quit` over QMP, else SIGKILL; waits until its
/// QEMU has ended.
async fn stop(dir: &Path) -> Result<()> {
    let Some(pid) = machine_pid(dir) else {
        return Ok(());
    };
    if qmp(dir, "quit").await.is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    for _ in 0..100 {
        if machine_pid(dir).is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "the QEMU of machine {} (pid {pid}) did not end; end it (`kill -9 {pid}`) and retry",
        dir.display()
    )
}

#[async_trait]
impl Provider for Qemu {
    async fn ensure(&self, name: &str, spec: &MachineSpec) -> Result<Machine> {
        let (this, name, spec) = (self.clone(), name.to_string(), spec.clone());
        tokio::task::spawn_blocking(move || this.ensure_blocking(&name, &spec)).await?
    }

    async fn list(&self) -> Result<Vec<MachineStatus>> {
        let entries = match std::fs::read_dir(&self.config.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).context(format!("listing {}", self.config.dir.display())),
        };
        let mut out = Vec::new();
        for entry in entries {
            let dir = entry?.path();
            if !dir.is_dir() {
                continue;
            }
            let name = dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            // One bad record must not hide (or keep from deletion) every other machine.
            match Self::record(&dir) {
                Ok(Some(record)) => out.push(MachineStatus {
                    machine: self.machine(&name, &record.spec, false),
                    running: machine_pid(&dir).is_some(),
                    spec: record.spec,
                }),
                Ok(None) => {}
                Err(e) => warn!("provider {}: {e:#}", self.name),
            }
        }
        out.sort_by(|a, b| a.machine.name.cmp(&b.machine.name));
        Ok(out)
    }

    async fn power(&self, name: &str, action: PowerAction) -> Result<()> {
        let (dir, record) = self.existing(name)?;
        let _lock = Self::lock(&dir)?;
        let running = machine_pid(&dir).is_some();
        match action {
            PowerAction::On if running => Ok(()),
            PowerAction::On => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || this.start(&dir, &record.args)).await?
            }
            PowerAction::Off => stop(&dir).await,
            PowerAction::Reset => {
                ensure!(running, "machine {name} is off; switch it on instead");
                qmp(&dir, "system_reset").await
            }
        }
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let (dir, _) = self.existing(name)?;
        let lock = Self::lock(&dir)?;
        stop(&dir).await?;
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        drop(lock);
        Ok(())
    }
}
