//! `ferry boot-ramdisk` on a "cloud server" (the debootstrapped web server: static
//! addressing, the installed agent) in QEMU: its agent swaps the boot to a ramdisk made
//! of the published base, the server's own kernel and drivers and its network, by
//! grub-once (BIOS and UEFI), kexec (through a deploy job onto the installed agent),
//! and the init shim (started by QEMU's direct kernel boot, no boot loader). Each time the ramdisk's agent reports as the same agent,
//! kind ramdisk, on the server's kernel, its network up from the copied static
//! configuration, and the machine powers off on command. A deliberately broken ramdisk
//! entered by grub-once panics and reboots; the server is back on its own system with
//! its agent online, and the attempt was reported failed.

use std::time::Duration;

use anyhow::{Result, ensure};
use ferry_tests::cloud::{self, Start};
use ferry_tests::vm::{Manager, ramdisk};
use ferry_tests::webmove::Firmware;

/// Starts the cloud server by `start`, enters its ramdisk by `method`, powers it off.
async fn case(start: Start, method: &str) -> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let mut s = cloud::start(&m, &work.path().join("server"), start).await?;
    let entered = cloud::enter(&m, &s, method).await?;
    eprintln!(
        "{} {method}: in the ramdisk {:.1} s after the command",
        start.name(),
        entered.secs
    );
    m.ferry(&["poweroff", &s.id])?;
    s.vm.wait_exit(Duration::from_secs(120)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn grub_once_on_uefi() -> Result<()> {
    case(Start::Firmware(Firmware::Uefi), "grub-once").await
}

#[tokio::test(flavor = "multi_thread")]
async fn grub_once_on_bios() -> Result<()> {
    case(Start::Firmware(Firmware::Bios), "grub-once").await
}

#[tokio::test(flavor = "multi_thread")]
async fn init_shim_without_a_boot_loader() -> Result<()> {
    case(Start::DirectKernel, "init").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_ramdisk_falls_back_to_the_servers_own_system() -> Result<()> {
    let Some(_) = ramdisk() else { return Ok(()) };
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let dir = work.path().join("broken");
    let s = cloud::start(&m, &dir, Start::Firmware(Firmware::Bios)).await?;
    let base = cloud::broken_base(&work.path().join("broken-base"))?;
    let sent_ms = ferry_mailbox::time::now_ms();
    let err = m
        .ferry(&[
            "boot-ramdisk",
            &s.id,
            "--method",
            "grub-once",
            "--boot-dir",
            &base.to_string_lossy(),
            "--wait",
            "120",
        ])
        .unwrap_err()
        .to_string();
    ensure!(
        err.contains("did not come up in the Ferry ramdisk") && err.contains("attempt failed"),
        "{err}"
    );
    // The kernel found no init in the ramdisk, panicked and rebooted; GRUB had already
    // cleared the once-only entry, so the server's own system is back.
    let view = m
        .wait_agent_status(&s.id, Duration::from_secs(600), |v| {
            v["status"]["kind"] == "installed"
                && v["status"]["updated_ms"]
                    .as_u64()
                    .is_some_and(|t| t > sent_ms)
                && v["heartbeat"]["at_ms"]
                    .as_u64()
                    .is_some_and(|t| t > sent_ms)
        })
        .await?;
    let console = s.vm.console();
    ensure!(
        console.contains("Kernel panic") && console.matches("FERRY-BOOTED").count() >= 2,
        "no panic and second boot of the server's own system on the console:\n{}",
        s.vm.tail()
    );
    ensure!(view["status"]["boot"].is_null(), "{view}");
    Ok(())
}

/// kexec, by a job: `ferry deploy IMAGE --to` the server's installed agent
/// `--boot-method kexec`; the job's target step brings the server into its ramdisk
/// and records how, and the ramdisk is checked like every method's. The deploy then
/// goes to the same agent in the ramdisk. Its plan names a disk the machine lacks, so
/// the ramdisk agent refuses it before touching any disk, and the job fails at the
/// deploy step in the agent's words.
#[tokio::test(flavor = "multi_thread")]
async fn kexec_by_a_deploy_job() -> Result<()> {
    let Some(_) = ramdisk() else { return Ok(()) };
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let mut s = cloud::start(
        &m,
        &work.path().join("server"),
        Start::Firmware(Firmware::Bios),
    )
    .await?;
    // A small image: the root filesystem without its programs.
    m.ferry(&[
        "capture",
        &s.id,
        "--image",
        "etc",
        "--path",
        "/",
        "--exclude",
        "/usr",
        "--exclude",
        "/boot",
    ])?;
    let plan = m
        .ferry(&["deploy", "etc", "--to", &s.id, "--plan-only"])?
        .replace("vda", "vdz");
    ensure!(plan.contains("disk: vdz"), "{plan}");
    let plan_file = work.path().join("plan.yaml");
    std::fs::write(&plan_file, plan)?;
    let job = m
        .ferry(&[
            "deploy",
            "etc",
            "--to",
            &s.id,
            "--plan",
            &plan_file.to_string_lossy(),
            "--boot-method",
            "kexec",
            "--detach",
        ])?
        .trim()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let j = loop {
        let j: serde_json::Value =
            serde_json::from_str(&m.ferry(&["job", "show", &job, "--json"])?)?;
        if j["status"] != "running" {
            break j;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "job {job} still running: {j:#}\n{}",
            s.vm.tail()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let steps = j["steps"].as_array().cloned().unwrap_or_default();
    let step = |name: &str| {
        steps
            .iter()
            .find(|st| st["step"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let target = step("target");
    ensure!(
        target["status"]["state"] == "done"
            && target["status"]["outcome"]["agent"] == s.id.as_str()
            && target["status"]["outcome"]["entered"]
                .as_str()
                .is_some_and(|e| e.contains("by kexec") && e.contains("10.0.2.15/24")),
        "the target step did not bring the server into its ramdisk: {j:#}"
    );
    cloud::in_ramdisk(&m, &s, "kexec")?;
    let deploy = step("deploy");
    ensure!(
        j["status"] == "failed"
            && deploy["status"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("disk vdz: not found on this machine")),
        "the deploy did not reach the ramdisk agent, or was not refused: {j:#}"
    );
    m.ferry(&["poweroff", &s.id])?;
    s.vm.wait_exit(Duration::from_secs(120)).await?;
    Ok(())
}
