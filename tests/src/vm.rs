//! The QEMU harness: the ramdisk `cargo xtask ramdisk` built, a manager (`ferry serve`
//! with its embedded store and boot server) set up for guests on QEMU's user network,
//! and VMs under TCG whose serial console goes to a file the tests read.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_model::survey::Survey;
use serde_json::Value;

use ferry_manager::config::ManagerConfig;
use ferry_manager::providers::ProviderConfig;
use ferry_manager::providers::qemu::QemuConfig;

use crate::procs::Proc;
use crate::util::free_port;

/// The OVMF build that boots both from CD and by iPXE's EFI driver.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// OVMF's code, for a VM whose variables persist (with a copy of [`OVMF_VARS`]).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF's blank variable store.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The MAC address tests give the guest's NIC.
pub const MAC: &str = "52:54:00:12:34:56";

/// Where `cargo xtask ramdisk` writes.
pub fn ramdisk_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ferry")
}

/// Whether the VM suites must run (set by `cargo xtask test` and `vm-test`).
pub fn vms_required() -> bool {
    std::env::var_os("FERRY_REQUIRE_VMS").is_some()
}

/// The ramdisk folder, or `None` (after saying why) when VM tests may be skipped.
pub fn ramdisk() -> Option<PathBuf> {
    let dir = ramdisk_dir();
    let ready = ["vmlinuz", "initrd.zst"]
        .iter()
        .all(|f| dir.join(f).is_file())
        && Path::new("/usr/bin/qemu-system-x86_64").exists();
    if ready {
        return Some(dir);
    }
    if vms_required() {
        panic!(
            "the ramdisk ({}) or qemu-system-x86_64 is missing; `cargo xtask vm-test` builds and installs them",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: no ramdisk in {} (run `cargo xtask vm-test`)",
        dir.display()
    );
    None
}

/// A QEMU guest, ended (by its PID) when dropped.
pub struct Qemu {
    proc: Running,
    console: PathBuf,
    started: Instant,
}

/// The QEMU of a [`Qemu`].
enum Running {
    /// Started by the test.
    Child(Proc),
    /// Made by a manager's QEMU provider in this folder (daemonized; its pid in
    /// `qemu.pid`), ended by its pid when the test is done with it.
    Made(PathBuf),
}

impl Running {
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Running::Child(p) => p.try_wait(),
            Running::Made(dir) => ferry_manager::providers::qemu::machine_pid(dir)
                .is_none()
                .then(|| std::process::ExitStatus::from_raw(0)),
        }
    }

    fn log(&self) -> String {
        match self {
            Running::Child(p) => p.log(),
            Running::Made(dir) => format!("a provider's machine in {}", dir.display()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Made(dir) = self
            && let Some(pid) = ferry_manager::providers::qemu::machine_pid(dir)
        {
            use nix::sys::signal::{Signal, kill};
            let _ = kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Creates an empty qcow2 disk of `size` (e.g. `1G`) unless `path` exists.
pub fn qcow2(path: &Path, size: &str) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .output()
        .context("running qemu-img (Debian: qemu-utils)")?;
    anyhow::ensure!(
        out.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The filesystem captured at `path` in the answer of `ferry capture --json`.
pub fn captured<'v>(capture: &'v Value, path: &str) -> Result<&'v Value> {
    capture["filesystems"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["path"] == path))
        .with_context(|| format!("{path} not captured: {capture:#}"))
}

/// The options every test VM shares: TCG with `cpus` CPUs, 1 GiB, serial console to
/// the file `console`, no display, no monitor, exit instead of reboot.
pub fn machine_args(cpus: u32, console: &Path) -> Vec<String> {
    let cpus = cpus.to_string();
    [
        "-accel",
        "tcg",
        "-m",
        "1024",
        "-smp",
        &cpus,
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
        "-serial",
        &format!("file:{}", console.display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// QEMU options booting the ramdisk's `vmlinux` directly (its PVH entry) with the
/// initrd of the boot files in `boot` (which carry a manager's agent config).
pub fn ramdisk_boot(boot: &Path) -> Vec<String> {
    vec![
        "-kernel".to_string(),
        ramdisk_dir().join("vmlinux").to_string_lossy().into(),
        "-initrd".into(),
        boot.join("initrd.zst").to_string_lossy().into(),
        "-append".into(),
        "console=ttyS0,115200 panic=-1".into(),
    ]
}

/// QEMU options for one virtio NIC with MAC [`MAC`] on QEMU's user network.
pub fn user_nic() -> Vec<String> {
    vec![
        "-netdev".into(),
        "user,id=n0".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
    ]
}

/// [`machine_args`] with one CPU and a 64 MiB scratch disk.
pub fn base_args(work: &Path, console: &Path) -> Result<Vec<String>> {
    let disk = work.join("disk.qcow2");
    qcow2(&disk, "64M")?;
    let mut a = machine_args(1, console);
    a.push("-drive".into());
    a.push(format!("file={},if=virtio,format=qcow2", disk.display()));
    Ok(a)
}

impl Qemu {
    /// Starts `qemu-system-x86_64` with `args` (inside network namespace `netns` if given).
    pub fn start(
        work: &Path,
        console: &Path,
        args: &[String],
        netns: Option<&str>,
    ) -> Result<Qemu> {
        let mut cmd = crate::netns::command(netns, "qemu-system-x86_64");
        cmd.args(args);
        let proc = Proc::spawn("qemu", &mut cmd, &work.join("qemu.log"))?;
        Ok(Qemu {
            proc: Running::Child(proc),
            console: console.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// The machine a manager's QEMU provider made in `dir` (ended by its pid when
    /// dropped).
    pub fn made(dir: &Path) -> Qemu {
        Qemu {
            proc: Running::Made(dir.to_path_buf()),
            console: dir.join("console.log"),
            started: Instant::now(),
        }
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        std::fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).to_string())
            .unwrap_or_default()
    }

    /// Seconds since QEMU started.
    pub fn age(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Waits until the console shows `needle`.
    pub async fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.console().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.proc.try_wait() {
                bail!(
                    "QEMU ended ({status}) before the console showed {needle:?}:\n{}",
                    self.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the console did not show {needle:?} within {timeout:?}:\n{}",
            self.tail()
        )
    }

    /// Waits for QEMU to exit (the guest powered off) and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.proc.try_wait() {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "the VM did not power off within {timeout:?}:\n{}",
            self.tail()
        )
    }

    /// The last lines of the console, for failure messages.
    pub fn tail(&self) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n") + "\nqemu: " + &self.proc.log()
    }
}

/// A QEMU provider for tests: TCG, machines in `dir`, run inside `netns` if given.
pub fn qemu_provider(dir: &Path, netns: Option<&str>) -> ProviderConfig {
    ProviderConfig::Qemu(QemuConfig {
        dir: dir.to_path_buf(),
        netns: netns.map(str::to_string),
        binary: "qemu-system-x86_64".into(),
        accel: "tcg".into(),
        ovmf_code: OVMF_CODE.into(),
        ovmf_vars: OVMF_VARS.into(),
        boot_url: None,
    })
}

/// A manager for guests: embedded store and boot server on the host's loopback (which
/// guests reach as 10.0.2.2), or on 192.0.2.1 inside a network namespace.
pub struct Manager {
    /// Its data folder.
    pub data: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    serve: Option<Proc>,
    netns: Option<String>,
    /// Base URL of the boot server as guests see it.
    pub boot_url: String,
}

impl Manager {
    /// Initialises and starts a manager. `host` is the address guests reach it at and
    /// `bind` the local address it binds (both 10.0.2.2 / 127.0.0.1 on QEMU's user
    /// network; 192.0.2.1 inside `netns`).
    pub fn start(work: &Path, netns: Option<&str>) -> Result<Manager> {
        Self::start_with(work, netns, |_| {})
    }

    /// A manager whose `ferry serve` the caller runs (or none): its config file, and
    /// the namespace its `ferry` commands run in.
    pub fn attach(config: &Path, netns: Option<&str>, boot_url: &str) -> Manager {
        Manager {
            data: config.parent().unwrap_or(Path::new(".")).to_path_buf(),
            config: config.to_path_buf(),
            serve: None,
            netns: netns.map(str::to_string),
            boot_url: boot_url.to_string(),
        }
    }

    /// [`Manager::start`], with `edit` making changes to the config before `ferry
    /// serve` starts (providers, say).
    pub fn start_with(
        work: &Path,
        netns: Option<&str>,
        edit: impl FnOnce(&mut ManagerConfig),
    ) -> Result<Manager> {
        let (bind, host) = match netns {
            Some(_) => ("192.0.2.1", "192.0.2.1"),
            None => ("127.0.0.1", "10.0.2.2"),
        };
        let (store_port, boot_port) = (free_port(), free_port());
        let data = work.join("manager");
        let boot_url = format!("http://{host}:{boot_port}/boot/");
        let mut m = Manager {
            config: data.join("ferry.yaml"),
            data,
            serve: None,
            netns: netns.map(str::to_string),
            boot_url: boot_url.clone(),
        };
        m.ferry(&[
            "init",
            "--data",
            &m.data.to_string_lossy(),
            "--listen",
            &format!("{bind}:{store_port}"),
            "--tls-name",
            host,
            "--agent-store-url",
            &format!("s3+https://{host}:{store_port}/ferry"),
            "--agent-heartbeat",
            "2",
            "--agent-poll",
            "1",
            "--boot-listen",
            &format!("{bind}:{boot_port}"),
            "--boot-dir",
            &ramdisk_dir().to_string_lossy(),
            "--boot-url",
            &boot_url,
            "--boot-append",
            "panic=-1",
        ])?;
        let mut config = ManagerConfig::load(&m.config)?;
        edit(&mut config);
        config.save(&m.config)?;
        let mut cmd = m.command();
        cmd.arg("serve");
        m.serve = Some(Proc::spawn(
            "ferry serve",
            &mut cmd,
            &work.join("serve.log"),
        )?);
        Ok(m)
    }

    fn command(&self) -> Command {
        let mut c = crate::procs::ferry_command(self.netns.as_deref());
        c.arg("--config").arg(&self.config);
        c
    }

    /// Runs a `ferry` subcommand; its standard output, or an error with its stderr.
    pub fn ferry(&self, args: &[&str]) -> Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .context("running ferry")?;
        if !out.status.success() {
            bail!(
                "ferry {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Runs a `ferry` subcommand on this terminal (progress bars and all).
    pub fn ferry_live(&self, args: &[&str]) -> Result<()> {
        let status = self
            .command()
            .args(args)
            .status()
            .context("running ferry")?;
        anyhow::ensure!(status.success(), "ferry {} failed", args.join(" "));
        Ok(())
    }

    /// Writes boot files (PXE tree and ISO) with this manager's agent config into `dir`.
    pub fn boot_files(&self, dir: &Path, append: &str) -> Result<()> {
        let r = ramdisk_dir();
        self.ferry(&[
            "boot-files",
            "--out",
            &dir.to_string_lossy(),
            "--kernel",
            &r.join("vmlinuz").to_string_lossy(),
            "--initrd",
            &r.join("initrd.zst").to_string_lossy(),
            "--append",
            append,
            "--iso",
        ])
        .map(|_| ())
    }

    /// Waits for a ramdisk agent that has a status and has beaten its heart twice;
    /// returns its view (`ferry agent show --json`).
    pub async fn wait_ramdisk_agent(&self, vm: &mut Qemu, timeout: Duration) -> Result<Value> {
        self.wait_agent(vm, timeout, |a| {
            a["status"]["kind"] == "ramdisk" && a["heartbeat"]["seq"].as_u64().unwrap_or(0) >= 2
        })
        .await
    }

    /// Waits for an agent whose view (an entry of `ferry agents --json`) satisfies
    /// `done`, failing early if the VM ends; returns that view.
    pub async fn wait_agent(
        &self,
        vm: &mut Qemu,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(text) = self.ferry(&["agents", "--json"])
                && let Ok(Value::Array(agents)) = serde_json::from_str::<Value>(&text)
            {
                for a in agents {
                    if done(&a) {
                        return Ok(a);
                    }
                    last = a;
                }
            }
            if let Some(status) = vm.proc.try_wait() {
                bail!(
                    "QEMU ended ({status}) before the agent reported:\n{}",
                    vm.tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "no agent as expected within {timeout:?}; last seen: {last:#}\n{}",
            vm.tail()
        )
    }

    /// A CD (see [`crate::debian::agent_cd`]) with the static agent `cargo xtask
    /// ramdisk` built and an agent config for this manager, at `work/agent.iso`.
    pub fn agent_cd(&self, work: &Path) -> Result<PathBuf> {
        let config = work.join("agent.yaml");
        self.ferry(&[
            "agent-config",
            "--out",
            &config.to_string_lossy(),
            "--heartbeat",
            "2",
            "--poll",
            "1",
        ])?;
        let agent = ramdisk_dir().join("../x86_64-unknown-linux-musl/agent/ferry-agent");
        anyhow::ensure!(
            agent.is_file(),
            "{} (built by `cargo xtask ramdisk`)",
            agent.display()
        );
        let cd = work.join("agent.iso");
        crate::debian::agent_cd(&cd, &agent, &config)?;
        Ok(cd)
    }

    /// Waits for an agent of `kind` (`installed`, `ramdisk`) whose survey satisfies
    /// `done`; its id and survey.
    pub async fn wait_survey(
        &self,
        vm: &mut Qemu,
        kind: &str,
        timeout: Duration,
        done: impl Fn(&Survey) -> bool,
    ) -> Result<(String, Survey)> {
        let survey =
            |a: &Value| serde_json::from_value::<Survey>(a["status"]["survey"].clone()).ok();
        let a = self
            .wait_agent(vm, timeout, |a| {
                a["status"]["kind"] == kind && survey(a).is_some_and(|s| done(&s))
            })
            .await?;
        let id = a["id"].as_str().unwrap_or_default().to_string();
        Ok((id, survey(&a).context("the survey reads back")?))
    }

    /// Restores filesystem `fs` of image `image` from this manager's library into
    /// `target` (on the host), as `ferry-agent restore` would.
    pub async fn restore(
        &self,
        image: &str,
        fs: &str,
        target: &Path,
    ) -> Result<ferry_image::RestoreReport> {
        let config = ferry_manager::config::ManagerConfig::load(&self.config)?;
        std::fs::create_dir_all(target)?;
        let req = ferry_image::RestoreRequest {
            image: image.into(),
            at: None,
            fs: fs.into(),
            target: target.to_path_buf(),
            overwrite: false,
            follow: None,
        };
        tokio::task::spawn_blocking(move || {
            let lib = ferry_manager::images::open(&config)?;
            ferry_image::restore(&lib, &req, &ferry_image::Meter::silent())
        })
        .await?
    }

    /// Fails if agent `id`'s fresh survey still lists an LVM snapshot of Ferry's.
    pub fn ensure_no_snapshots(&self, id: &str) -> Result<()> {
        let survey: Survey = serde_json::from_str(&self.ferry(&["survey", id, "--json"])?)?;
        let left: Vec<&str> = survey
            .os
            .storage
            .lvm
            .lvs
            .iter()
            .map(|l| l.name.as_str())
            .filter(|n| n.starts_with("ferry-snap"))
            .collect();
        anyhow::ensure!(left.is_empty(), "snapshots left behind: {left:?}");
        Ok(())
    }

    /// Waits until `ferry agent show ID --json` satisfies `done`; returns that view.
    pub async fn wait_agent_status(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(text) = self.ferry(&["agent", "show", id, "--json"])
                && let Ok(view) = serde_json::from_str::<Value>(&text)
            {
                if done(&view) {
                    return Ok(view);
                }
                last = view;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("agent {id} did not reach the expected state within {timeout:?}; last: {last}")
    }
}
