//! Moving the web server ([`crate::debian::web_source_disk`]) onto another machine, as
//! the deploy suite and `cargo xtask bench deploy` do it: the source boots (by BIOS
//! or UEFI) and is captured live through its agent; the target, a VM with blank disks
//! and another MAC, PXE-boots the ramdisk from the manager's boot server; `ferry
//! deploy` lays it out, restores, re-wires and reboots it; the migrated system then
//! reports on the console how it came up, and nginx is asked for its page over a port
//! QEMU forwards to the guest's 10.0.2.15.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ferry_model::deploy::{DeployPlan, StepTime};
use serde_json::Value;

use crate::debian::{WEB_MAC, WEB_MARKER, web_source_disk};
use crate::util::free_port;
use crate::vm::{Manager, OVMF_CODE, OVMF_VARS, Qemu, machine_args, qcow2, qemu_provider};
use ferry_model::machine::{BootFrom, DiskSpec, MachineFirmware, MachineSpec, NicSpec};

/// The firmware a VM boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS.
    Bios,
    /// OVMF, with its variables in a file (so boot entries outlive a reboot).
    Uefi,
}

impl Firmware {
    /// How the migrated system's report names it.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }

    /// QEMU options for this firmware, its variables (UEFI) kept in `work`.
    pub fn args(self, work: &Path) -> Result<Vec<String>> {
        Ok(match self {
            Firmware::Bios => Vec::new(),
            Firmware::Uefi => {
                let vars = work.join("ovmf-vars.fd");
                if !vars.exists() {
                    std::fs::copy(OVMF_VARS, &vars)
                        .with_context(|| format!("copying {OVMF_VARS} (Debian: ovmf)"))?;
                }
                vec![
                    "-drive".into(),
                    format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                    "-drive".into(),
                    format!("if=pflash,format=raw,file={}", vars.display()),
                ]
            }
        })
    }
}

/// Boots the web server on `firmware` from the cached disk (its writes thrown away)
/// and waits for its agent's survey; the VM and the agent's id.
pub async fn source_vm(
    m: &Manager,
    work: &Path,
    firmware: Firmware,
    image: &str,
) -> Result<(Qemu, String)> {
    let dir = work.join(format!("source-{image}"));
    std::fs::create_dir_all(&dir)?;
    let cd = m.agent_cd(&dir)?;
    source_vm_in(m, &cd, &dir, firmware, None).await
}

/// QEMU options for the web server's disk (its writes kept only while the VM runs),
/// the agent's CD `cd` and its NIC on QEMU's user network.
pub fn web_server_args(cd: &Path) -> Result<Vec<String>> {
    let disk = web_source_disk()?;
    Ok(vec![
        "-drive".into(),
        format!("file={},if=virtio,format=raw,snapshot=on", disk.display()),
        "-cdrom".into(),
        cd.to_string_lossy().into(),
        "-netdev".into(),
        "user,id=n0".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={WEB_MAC}"),
    ])
}

/// [`source_vm`] with the agent's CD `cd`, in folder `dir`, QEMU run inside network
/// namespace `netns` if given.
pub async fn source_vm_in(
    m: &Manager,
    cd: &Path,
    dir: &Path,
    firmware: Firmware,
    netns: Option<&str>,
) -> Result<(Qemu, String)> {
    let console = dir.join("console.log");
    let mut args = machine_args(1, &console);
    args.extend(firmware.args(dir)?);
    args.extend(web_server_args(cd)?);
    let mut vm = Qemu::start(dir, &console, &args, netns)?;
    let (id, survey) = m
        .wait_survey(&mut vm, "installed", Duration::from_secs(600), |s| {
            s.hostname == "ferry-web"
        })
        .await
        .context("the web server's agent")?;
    let mode = format!("{:?}", survey.hardware.firmware.mode).to_lowercase();
    ensure!(
        mode == firmware.name(),
        "the source booted by {mode}, not {}",
        firmware.name()
    );
    Ok((vm, id))
}

/// Boots the web server on `firmware`, captures every filesystem into image `image`
/// through its agent, and switches it off. Returns the agent's id and `ferry capture
/// --json`'s answer.
pub async fn capture_source(
    m: &Manager,
    work: &Path,
    firmware: Firmware,
    image: &str,
) -> Result<(String, Value)> {
    let (vm, id) = source_vm(m, work, firmware, image).await?;
    let out = m.ferry(&[
        "capture",
        &id,
        "--image",
        image,
        "--live",
        "--json",
        "--timeout",
        "1800",
    ])?;
    let capture: Value = serde_json::from_str(&out).context("ferry capture --json")?;
    // Switched off (an installed agent stops only itself on `ferry poweroff`).
    drop(vm);
    Ok((id, capture))
}

/// A target machine: firmware, blank virtio disks, its NIC's MAC.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its firmware.
    pub firmware: Firmware,
    /// Sizes of its disks in GiB, `vda` first.
    pub disks: Vec<u32>,
    /// Its NIC's MAC.
    pub mac: &'static str,
}

impl Target {
    /// The first case's target: UEFI, one 5 GiB disk (the source has 3), another MAC.
    pub fn larger_uefi() -> Target {
        Target {
            firmware: Firmware::Uefi,
            disks: vec![5],
            mac: "52:54:00:f0:00:21",
        }
    }
}

/// A target after `ferry deploy`, running the migrated system.
pub struct Deployed {
    /// The VM (ended when dropped).
    pub vm: Qemu,
    /// The deploy's steps and their durations.
    pub steps: Vec<StepTime>,
    /// Seconds from starting `ferry deploy` to the migrated system's boot report.
    pub to_booted: f64,
    /// The host port QEMU forwards to the guest's 10.0.2.15:80.
    pub http_port: u16,
    /// The network namespace QEMU runs in, if not the test's.
    pub netns: Option<String>,
}

impl Deployed {
    /// The migrated system's boot report lines with `tag` (`FERRY-ADDR` …), tag cut off and
    /// blanks collapsed (only the migrated system prints them).
    pub fn report(&self, tag: &str) -> Vec<String> {
        self.vm
            .console()
            .lines()
            .filter_map(|l| l.trim().strip_prefix(tag))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// The migrated system's interface holding `address` (`10.0.2.15/24`), and its MAC.
    pub fn nic_with(&self, address: &str) -> Option<(String, String)> {
        let name = self.report("FERRY-ADDR").into_iter().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&address)).then(|| f.get(1).map(|n| n.to_string()))?
        })?;
        let mac = self.report("FERRY-LINK").into_iter().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1).map(|n| n.trim_end_matches(':')) == Some(&name)).then(|| {
                f.iter()
                    .position(|w| *w == "link/ether")
                    .and_then(|i| f.get(i + 1))
                    .map(|m| m.to_string())
            })?
        })?;
        Some((name, mac))
    }

    /// GET / from the migrated system's nginx: the page.
    pub async fn http_get(&self) -> Result<String> {
        if let Some(ns) = &self.netns {
            // From the target's own data centre: nothing gets in from outside.
            let out = crate::netns::command(Some(ns), "python3")
                .arg("-c")
                .arg(format!(
                    "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{}/', timeout=30).read().decode(), end='')",
                    self.http_port
                ))
                .output()?;
            ensure!(
                out.status.success(),
                "GET / in {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(String::from_utf8_lossy(&out.stdout).to_string());
        }
        // reqwest's rustls is built without a provider of its own: the store's.
        ferry_mailbox::store::install_crypto();
        let resp = reqwest::get(format!("http://127.0.0.1:{}/", self.http_port)).await?;
        ensure!(
            resp.status().is_success(),
            "nginx answered {}",
            resp.status()
        );
        Ok(resp.text().await?)
    }
}

/// Starts `target`, PXE-booting the ramdisk from the manager's boot server; the VM,
/// its folder and the host port forwarded to the guest's 10.0.2.15:80.
fn target_vm(
    m: &Manager,
    work: &Path,
    target: &Target,
    image: &str,
) -> Result<(Qemu, PathBuf, u16)> {
    let dir = work.join(format!("target-{image}"));
    std::fs::create_dir_all(&dir)?;
    let console = dir.join("console.log");
    // The target reboots into its disk: no -no-reboot.
    let mut args: Vec<String> = machine_args(1, &console)
        .into_iter()
        .filter(|a| a != "-no-reboot")
        .collect();
    args.extend(target.firmware.args(&dir)?);
    for (i, size) in target.disks.iter().enumerate() {
        let disk = dir.join(format!("disk{i}.qcow2"));
        qcow2(&disk, &format!("{size}G"))?;
        args.extend([
            "-drive".to_string(),
            format!("file={},if=virtio,format=qcow2", disk.display()),
        ]);
    }
    let http_port = free_port();
    args.extend([
        "-netdev".into(),
        format!(
            "user,id=n0,bootfile={}boot.ipxe,hostfwd=tcp:127.0.0.1:{http_port}-10.0.2.15:80",
            m.boot_url
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={}", target.mac),
        // The network once: the blank disks first would fail anyway, and after the
        // deploy's reboot the firmware's own order applies.
        "-boot".into(),
        "once=n".into(),
    ]);
    let vm = Qemu::start(&dir, &console, &args, None)?;
    Ok((vm, dir, http_port))
}

/// How [`deploy_target`] deploys.
#[derive(Debug, Clone, Copy)]
pub enum Via<'a> {
    /// `ferry deploy IMAGE` of the image's latest capture.
    Deploy,
    /// `ferry migrate SOURCE --to AGENT` (two-step: a new capture into the image,
    /// then its deploy), followed by `ferry job watch --json`.
    Migrate {
        /// The source's agent id.
        source: &'a str,
    },
}

/// Starts `target`, waits for its ramdisk agent (PXE from the manager's boot server),
/// deploys `image` onto it (the default plan, or what `plan` makes of it) `via` a
/// command or a migrate job, and waits for the migrated system's boot report.
pub async fn deploy_target(
    m: &Manager,
    work: &Path,
    target: &Target,
    image: &str,
    plan: impl FnOnce(DeployPlan) -> DeployPlan,
    via: Via<'_>,
) -> Result<Deployed> {
    let (mut vm, dir, http_port) = target_vm(m, work, target, image)?;
    let agent = m
        .wait_ramdisk_agent(&mut vm, Duration::from_secs(300))
        .await
        .context("the target's ramdisk agent")?;
    let id = agent["id"].as_str().unwrap_or_default().to_string();
    // The manager's default plan for this target, as `ferry deploy` would send it.
    let default: DeployPlan =
        serde_saphyr::from_str(&m.ferry(&["deploy", image, "--to", &id, "--plan-only"])?)
            .context("ferry deploy --plan-only")?;
    let plan_file = dir.join("plan.json");
    let mut plan = plan(default);
    if matches!(via, Via::Migrate { .. }) {
        // For the capture the job makes.
        plan.capture = None;
    }
    std::fs::write(&plan_file, serde_json::to_string_pretty(&plan)?)?;
    let plan_file = plan_file.to_string_lossy();

    let started = std::time::Instant::now();
    let steps = match via {
        Via::Deploy => {
            let out = m
                .ferry(&[
                    "deploy",
                    image,
                    "--to",
                    &id,
                    "--plan",
                    &plan_file,
                    "--json",
                    "--timeout",
                    "3600",
                ])
                .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
            let answer: Value = serde_json::from_str(&out).context("ferry deploy --json")?;
            serde_json::from_value(answer["steps"].clone())?
        }
        Via::Migrate { source } => {
            let job = m.ferry(&[
                "migrate", source, "--to", &id, "--image", image, "--live", "--plan", &plan_file,
                "--detach",
            ])?;
            let out = m
                .ferry(&["job", "watch", job.trim(), "--json", "--timeout", "3600"])
                .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
            let shown: Value = serde_json::from_str(&out).context("the job as JSON")?;
            ensure!(shown["status"] == "succeeded", "{shown:#}");
            ensure!(shown["spec"].get("direct").is_none(), "{shown:#}");
            deploy_steps(&shown)?
        }
    };
    vm.wait_console("FERRY-BOOTED", Duration::from_secs(900))
        .await
        .context("the migrated system's boot report")?;
    Ok(Deployed {
        vm,
        steps,
        to_booted: started.elapsed().as_secs_f64(),
        http_port,
        netns: None,
    })
}

/// The provider [`manager`] configures.
pub const PROVIDER: &str = "lab";

/// A manager (embedded store, boot server) with a QEMU provider [`PROVIDER`] (TCG,
/// machines in `work/machines`).
pub fn manager(work: &Path) -> Result<Manager> {
    Manager::start_with(work, None, |c| {
        c.providers
            .insert(PROVIDER.into(), qemu_provider(&work.join("machines"), None));
    })
}

impl Target {
    /// The machine spec that has [`PROVIDER`] make this target, its NIC's port 80
    /// forwarded from `bind`:`http_port` of the provider's host (for the migrated
    /// system's 10.0.2.15).
    pub fn spec(&self, bind: &str, http_port: u16) -> MachineSpec {
        MachineSpec {
            provider: PROVIDER.into(),
            cpus: 1,
            memory_mib: 1024,
            firmware: match self.firmware {
                Firmware::Bios => MachineFirmware::Bios,
                Firmware::Uefi => MachineFirmware::Uefi,
            },
            boot: BootFrom::Pxe,
            disks: self
                .disks
                .iter()
                .map(|&size_gib| DiskSpec { size_gib })
                .collect(),
            nics: vec![NicSpec {
                mac: self.mac.into(),
                forwards: vec![format!("tcp:{bind}:{http_port}-10.0.2.15:80")],
            }],
        }
    }
}

/// Polls `ferry job show ID --json` until `done` holds for it, failing on a job that
/// is no longer running.
pub async fn wait_job(
    m: &Manager,
    job: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let shown: Value = serde_json::from_str(&m.ferry(&["job", "show", job, "--json"])?)?;
        if done(&shown) {
            return Ok(shown);
        }
        ensure!(shown["status"] == "running", "job {job}: {shown:#}");
        ensure!(
            std::time::Instant::now() < deadline,
            "job {job}: not {what} within {timeout:?}: {shown:#}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `ferry migrate SOURCE --to new=SPEC --image IMAGE --live --detach [--direct]`, then
/// waits for the provider to make the target machine; the job's id and the machine.
pub async fn start_migration(
    m: &Manager,
    work: &Path,
    source: &str,
    spec: &MachineSpec,
    image: &str,
    direct: bool,
) -> Result<(String, Qemu)> {
    let spec_file = work.join(format!("target-{image}.yaml"));
    std::fs::write(&spec_file, serde_json::to_string(spec)?)?;
    let to = format!("new={}", spec_file.display());
    let mut args = vec![
        "migrate", source, "--to", &to, "--image", image, "--live", "--detach",
    ];
    if direct {
        args.push("--direct");
    }
    let job = m.ferry(&args)?;
    let job = job.trim().to_string();
    let shown = wait_job(m, &job, Duration::from_secs(300), "made its target", |j| {
        j["machine"].is_object()
    })
    .await?;
    let console = shown["machine"]["console"]
        .as_str()
        .context("the machine's console")?;
    let dir = Path::new(console)
        .parent()
        .context("the machine's folder")?;
    Ok((job, Qemu::made(dir)))
}

/// How [`migrate`] follows its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// `ferry job watch --json`, read by the caller.
    Json,
    /// `ferry job watch` on this terminal, with its progress bars and summary.
    Terminal,
}

/// `ferry migrate … --to new=SPEC [--direct]`: boots the web server on `firmware` and
/// migrates it as a job onto `target`, a machine the manager's QEMU provider makes (it
/// PXE-boots the ramdisk while the source is captured; the job knows its ramdisk agent
/// by its MAC); the source is switched off once captured. `ferry serve` carries the
/// job on, `ferry job watch` follows it. Returns the migrated target and the job as
/// `ferry job watch --json` ends it.
pub async fn migrate(
    m: &Manager,
    work: &Path,
    firmware: Firmware,
    target: &Target,
    image: &str,
    direct: bool,
    follow: Follow,
) -> Result<(Deployed, Value)> {
    let say = |what: &str| {
        if follow == Follow::Terminal {
            println!("{what}");
        }
    };
    say("starting the source: the web server (Debian 12, nginx) with its installed agent");
    let (source, id) = source_vm(m, work, firmware, image).await?;
    say(&format!(
        "the source's agent {} reports; `ferry migrate` onto a new {} machine",
        &id[..12],
        target.firmware.name()
    ));
    let http_port = free_port();
    let started = std::time::Instant::now();
    let (job, mut vm) = start_migration(
        m,
        work,
        &id,
        &target.spec("127.0.0.1", http_port),
        image,
        direct,
    )
    .await?;
    let out = match follow {
        Follow::Json => {
            wait_job(
                m,
                &job,
                Duration::from_secs(1800),
                "captured its source",
                |j| j["steps"][0]["status"]["state"] == "done",
            )
            .await?;
            drop(source);
            m.ferry(&["job", "watch", &job, "--json", "--timeout", "3600"])
        }
        // The source runs on until the end (as it would until a cut-over).
        Follow::Terminal => m
            .ferry_live(&["job", "watch", &job, "--timeout", "3600"])
            .and_then(|()| m.ferry(&["job", "show", &job, "--json"])),
    }
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
    let shown: Value = serde_json::from_str(&out).context("the job as JSON")?;
    let steps = deploy_steps(&shown)?;
    say("the target reboots into the migrated system…");
    vm.wait_console("FERRY-BOOTED", Duration::from_secs(900))
        .await
        .context("the migrated system's boot report")?;
    Ok((
        Deployed {
            vm,
            steps,
            to_booted: started.elapsed().as_secs_f64(),
            http_port,
            netns: None,
        },
        shown,
    ))
}

/// The deploy step's times of a job as `ferry job show --json` shows it.
pub fn deploy_steps(job: &Value) -> Result<Vec<StepTime>> {
    let deploy = job["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == "deploy"))
        .with_context(|| format!("no deploy step: {job:#}"))?;
    Ok(serde_json::from_value(
        deploy["status"]["outcome"]["steps"].clone(),
    )?)
}

/// What every migrated web server must show: booted by `firmware` under the source's
/// name, the static address on the target's NIC `mac`, nginx's page from `/var`.
pub async fn check_migrated(d: &Deployed, firmware: Firmware, mac: &str) -> Result<()> {
    let tail = || d.vm.tail();
    assert_eq!(
        d.report("FERRY-BOOTED"),
        vec![format!("ferry-web {}", firmware.name())],
        "{}",
        tail()
    );
    let (nic, nic_mac) = d
        .nic_with("10.0.2.15/24")
        .unwrap_or_else(|| panic!("no NIC holds 10.0.2.15/24:\n{}", tail()));
    assert_eq!(
        (nic.as_str(), nic_mac.as_str()),
        ("eth0", mac),
        "{}",
        tail()
    );
    let page = d.http_get().await?;
    ensure!(page.trim() == WEB_MARKER, "the page differs: {page}");
    let steps: Vec<&str> = d.steps.iter().map(|s| s.step.as_str()).collect();
    for step in ["wipe", "partition", "filesystems", "restore", "configure"] {
        assert!(steps.contains(&step), "{step} not in {steps:?}");
    }
    eprintln!(
        "deployed in {:.0} s, booted {:.0} s after `ferry deploy` or `ferry migrate` started; steps: {}",
        d.steps.iter().map(|s| s.millis).sum::<u64>() as f64 / 1000.0,
        d.to_booted,
        d.steps
            .iter()
            .map(|s| format!("{} {:.1} s", s.step, s.millis as f64 / 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Seconds between two Unix-ms fields.
fn secs_between(from: &Value, to: &Value) -> f64 {
    to.as_u64()
        .unwrap_or(0)
        .saturating_sub(from.as_u64().unwrap_or(0)) as f64
        / 1000.0
}

/// A migrate job's phases, from `ferry job show --json` at its end: (phase, seconds),
/// the last one from `ferry migrate` to the migrated system's boot report
/// (`to_booted`).
pub fn phases(job: &Value, to_booted: f64) -> Result<Vec<(String, f64)>> {
    let step = |name: &str| {
        job["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["step"] == name))
            .with_context(|| format!("no step {name} in {job:#}"))
    };
    let (capture, found, deploy) = (step("capture")?, step("target")?, step("deploy")?);
    let created = &job["spec"]["created_ms"];
    let mut out = vec![(
        "capture (command sent → answer recorded)".to_string(),
        secs_between(&capture["started_ms"], &capture["ended_ms"]),
    )];
    if let Some(made) = job["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["event"] == "provisioned"))
    {
        out.push((
            "target machine made by the provider, from the job's start".into(),
            secs_between(created, &made["at_ms"]),
        ));
    }
    out.push((
        "target's ramdisk agent found, from the job's start (meanwhile)".into(),
        secs_between(created, &found["ended_ms"]),
    ));
    out.push((
        "deploy sent, from the job's start".into(),
        secs_between(created, &deploy["started_ms"]),
    ));
    out.push((
        "deploy (command sent → answer recorded)".into(),
        secs_between(&deploy["started_ms"], &deploy["ended_ms"]),
    ));
    for s in deploy["status"]["outcome"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push((
            format!("deploy: {}", s["step"].as_str().unwrap_or("?")),
            s["millis"].as_u64().unwrap_or(0) as f64 / 1000.0,
        ));
    }
    if let Ok(discard) = step("discard") {
        out.push((
            "discard of the temporary repository".into(),
            secs_between(&discard["started_ms"], &discard["ended_ms"]),
        ));
    }
    out.push((
        "job (made → done)".into(),
        secs_between(created, &job["ended_ms"]),
    ));
    out.push((
        "`ferry migrate` to the migrated system's boot report".into(),
        to_booted,
    ));
    Ok(out)
}

/// Bytes a migrate job captured.
pub fn captured_bytes(job: &Value) -> u64 {
    job["steps"][0]["status"]["outcome"]["filesystems"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["bytes"].as_u64()).sum())
        .unwrap_or(0)
}
