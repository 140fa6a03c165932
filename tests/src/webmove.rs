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

use crate::debian::{WEB_MAC, web_source_disk};
use crate::util::free_port;
use crate::vm::{Manager, OVMF_CODE, OVMF_VARS, Qemu, machine_args, qcow2};

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
    fn args(self, work: &Path) -> Result<Vec<String>> {
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
async fn source_vm(
    m: &Manager,
    work: &Path,
    firmware: Firmware,
    image: &str,
) -> Result<(Qemu, String)> {
    let disk = web_source_disk()?;
    let dir = work.join(format!("source-{image}"));
    std::fs::create_dir_all(&dir)?;
    let cd = m.agent_cd(&dir)?;
    let console = dir.join("console.log");
    let mut args = machine_args(1, &console);
    args.extend(firmware.args(&dir)?);
    args.extend([
        "-drive".into(),
        format!("file={},if=virtio,format=raw,snapshot=on", disk.display()),
        "-cdrom".into(),
        cd.to_string_lossy().into(),
        "-netdev".into(),
        "user,id=n0".into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={WEB_MAC}"),
    ]);
    let mut vm = Qemu::start(&dir, &console, &args, None)?;
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
    /// Sizes of its disks (`5G`), `vda` first.
    pub disks: Vec<&'static str>,
    /// Its NIC's MAC.
    pub mac: &'static str,
}

impl Target {
    /// The first case's target: UEFI, one 5 GiB disk (the source has 3), another MAC.
    pub fn larger_uefi() -> Target {
        Target {
            firmware: Firmware::Uefi,
            disks: vec!["5G"],
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
        qcow2(&disk, size)?;
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

/// Starts `target`, waits for its ramdisk agent (PXE from the manager's boot server),
/// deploys `image` onto it (the default plan, or what `plan` makes of it), and waits
/// for the migrated system's boot report.
pub async fn deploy_target(
    m: &Manager,
    work: &Path,
    target: &Target,
    image: &str,
    plan: impl FnOnce(DeployPlan) -> DeployPlan,
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
    std::fs::write(&plan_file, serde_json::to_string_pretty(&plan(default))?)?;

    let started = std::time::Instant::now();
    let out = m
        .ferry(&[
            "deploy",
            image,
            "--to",
            &id,
            "--plan",
            &plan_file.to_string_lossy(),
            "--json",
            "--timeout",
            "3600",
        ])
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
    let answer: Value = serde_json::from_str(&out).context("ferry deploy --json")?;
    let steps: Vec<StepTime> = serde_json::from_value(answer["steps"].clone())?;
    vm.wait_console("FERRY-BOOTED", Duration::from_secs(900))
        .await
        .context("the migrated system's boot report")?;
    Ok(Deployed {
        vm,
        steps,
        to_booted: started.elapsed().as_secs_f64(),
        http_port,
    })
}

/// `ferry migrate`: boots the web server on `firmware`, starts `target` booting the
/// ramdisk meanwhile, and migrates the one onto the other as a job matched to the
/// target by its MAC (the manager's `ferry serve` and `ferry job watch` both carry
/// it on); the source is switched off once captured. Returns the migrated target and
/// the job as `ferry job watch --json` ends it.
pub async fn migrate(
    m: &Manager,
    work: &Path,
    firmware: Firmware,
    target: &Target,
    image: &str,
) -> Result<(Deployed, Value)> {
    let (source, id) = source_vm(m, work, firmware, image).await?;
    let (mut vm, _, http_port) = target_vm(m, work, target, image)?;
    let started = std::time::Instant::now();
    let mac = format!("mac={}", target.mac);
    let job = m.ferry(&[
        "migrate", &id, "--to", &mac, "--image", image, "--live", "--detach",
    ])?;
    let job = job.trim().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(1800);
    loop {
        let shown: Value = serde_json::from_str(&m.ferry(&["job", "show", &job, "--json"])?)?;
        ensure!(shown["status"] == "running", "job {job}: {shown:#}");
        if shown["steps"][0]["status"]["state"] == "done" {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "job {job} has not captured its source: {shown:#}"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    drop(source);
    let out = m
        .ferry(&["job", "watch", &job, "--json", "--timeout", "3600"])
        .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
    let shown: Value = serde_json::from_str(&out).context("ferry job watch --json")?;
    let deploy = shown["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == "deploy"))
        .with_context(|| format!("no deploy step: {shown:#}"))?;
    let steps: Vec<StepTime> =
        serde_json::from_value(deploy["status"]["outcome"]["steps"].clone())?;
    vm.wait_console("FERRY-BOOTED", Duration::from_secs(900))
        .await
        .context("the migrated system's boot report")?;
    Ok((
        Deployed {
            vm,
            steps,
            to_booted: started.elapsed().as_secs_f64(),
            http_port,
        },
        shown,
    ))
}
