//! Complete migrations that boot: the web server (a debootstrapped Debian 12 with an
//! ext4 root, an xfs `/var` holding nginx's page, static addressing) is captured live
//! through its agent, then deployed onto a PXE-booted target with other firmware,
//! other disks and another MAC. The target reboots from its own disk into the migrated
//! system, which reports how it came up on the console and serves the source's page
//! on its new NIC.
//! - BIOS source → UEFI target with a larger disk, by `ferry migrate` across
//!   firewalls that only let connections out. Four hosts as network namespaces on one
//!   bridge: the store's host runs the embedded store (`ferry serve`, carrying no
//!   jobs); the manager's host runs two `ferry serve` replicas with their boot
//!   servers, its firewall dropping every inbound connection but to those; the source
//!   data centre holds the web server with its installed agent, and the target data
//!   centre is the QEMU provider's hypervisor host, both dropping every inbound
//!   connection. The job is a direct migration: it captures the source live into a
//!   temporary repository of its own (not the library) while the provider makes the
//!   target VM, which PXE-boots the ramdisk by connecting out; it finds the target's
//!   agent by its MAC and deploys the default plan while the capture still runs,
//!   restoring each filesystem as soon as it is captured, then deletes the
//!   repository. One replica is killed in the middle of the deploy; the other
//!   finishes the job, and the target's agent ran the deploy once.
//!   The migrated system's nginx serves the page inside the target data centre, and
//!   nothing from the manager's or the source's host gets in there;
//! - UEFI source → BIOS target with RAID1 over two disks + LVM (the plan made from
//!   the default one), where the source had one plain disk, by a two-step `ferry
//!   migrate` job (a capture into the library, then its deploy) onto the PXE-booted
//!   target's agent.

use anyhow::{Context, Result};
use ferry_manager::bootserver::BootConfig;
use ferry_manager::config::ManagerConfig;
use ferry_model::deploy::StepTime;
use ferry_model::deploy::examples::{fs, mirror};
use ferry_model::deploy::{DeployPlan, LvLayout, VgLayout};
use ferry_model::survey::BootMode;
use ferry_tests::netns::{Net, OUTBOUND_ONLY, outbound_only_but, tools_missing};
use ferry_tests::procs::{Proc, command_runs, ferry_init, ferry_serve};
use ferry_tests::util::missing;
use ferry_tests::vm::{Manager, qemu_provider, ramdisk, ramdisk_dir};
use ferry_tests::webmove::{
    Deployed, Firmware, PROVIDER, Target, Via, check_migrated, deploy_target, source_vm,
    source_vm_in, start_migration, wait_job,
};
use serde_json::Value;
use std::time::Duration;

const GIB: u64 = 1 << 30;

/// The size in MiB the report gives the filesystem at `mount`.
fn size_mib(d: &Deployed, mount: &str) -> u64 {
    d.report("FERRY-DF")
        .iter()
        .find_map(|l| {
            let (m, size) = l.split_once(' ')?;
            (m == mount).then(|| size.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// What the BIOS web server migrated onto [`Target::larger_uefi`] must show, with
/// the job as it ended.
async fn check_larger_uefi(d: &Deployed, job: &Value, target: &Target) -> Result<()> {
    assert_eq!(job["status"], "succeeded", "{job:#}");
    let matched = &job["steps"][1]["status"]["outcome"];
    assert_eq!(matched["result"], "matched", "{job:#}");
    let captured = &job["steps"][0]["status"]["outcome"];
    let paths: Vec<&str> = captured["filesystems"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["path"].as_str()).collect())
        .unwrap_or_default();
    assert!(paths.contains(&"/") && paths.contains(&"/var"), "{job:#}");
    check_migrated(d, Firmware::Uefi, target.mac).await?;
    let mounts = d.report("FERRY-MOUNT");
    assert!(
        mounts.iter().any(|l| l.starts_with("/ ext4 /dev/vda")),
        "{mounts:?}"
    );
    assert!(
        mounts.iter().any(|l| l.starts_with("/var xfs /dev/vda")),
        "{mounts:?}"
    );
    // The root took the larger disk's room (the source's was 2 GiB).
    assert!(size_mib(d, "/") > 3000, "{:?}", d.report("FERRY-DF"));
    Ok(())
}

/// RAID1 over `vda` and `vdb` (a BIOS boot partition on each), LVM on the array, the
/// root (ext4) and `/var` (xfs) as volumes; the rest of `default` kept.
fn mirrored(mut p: DeployPlan) -> DeployPlan {
    assert_eq!(p.boot.mode, BootMode::Bios);
    let uuid = |mount: &str| {
        p.storage
            .filesystems
            .iter()
            .find(|f| f.mount.as_deref() == Some(mount))
            .and_then(|f| f.uuid.clone())
    };
    let (root_uuid, var_uuid) = (uuid("/"), uuid("/var"));
    let (disks, md) = mirror(&["vda", "vdb"], 3 * GIB);
    p.storage.disks = disks;
    p.storage.md = vec![md];
    p.storage.vgs = vec![VgLayout {
        name: "vg0".into(),
        pvs: vec!["md0".into()],
        lvs: vec![
            LvLayout {
                name: "var".into(),
                size_bytes: Some(GIB),
            },
            LvLayout {
                name: "root".into(),
                size_bytes: None,
            },
        ],
    }];
    let mut root = fs("vg0/root", "ext4", Some("/"), Some("/"));
    root.uuid = root_uuid;
    let mut var = fs("vg0/var", "xfs", Some("/var"), Some("/var"));
    var.uuid = var_uuid;
    p.storage.filesystems = vec![root, var];
    p.boot.disks = vec!["vda".into(), "vdb".into()];
    p
}

#[tokio::test]
async fn a_uefi_web_server_moves_onto_raid1_and_lvm_on_a_bios_machine() -> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    // A first capture, for the default plan that the mirrored one is made from.
    let (source, id) = source_vm(&m, work.path(), Firmware::Uefi, "web-uefi").await?;
    m.ferry(&[
        "capture",
        &id,
        "--image",
        "web-uefi",
        "--live",
        "--timeout",
        "1800",
    ])?;
    let target = Target {
        firmware: Firmware::Bios,
        disks: vec![3, 3],
        mac: "52:54:00:f0:00:22",
    };
    // A two-step migration: the job captures the running source again into the
    // library, then deploys that capture with the plan.
    let via = Via::Migrate { source: &id };
    let d = deploy_target(&m, work.path(), &target, "web-uefi", mirrored, via).await?;
    drop(source);
    check_migrated(&d, Firmware::Bios, target.mac).await?;
    let mounts = d.report("FERRY-MOUNT");
    assert!(
        mounts.contains(&"/ ext4 /dev/mapper/vg0-root".to_string()),
        "{mounts:?}"
    );
    assert!(
        mounts.contains(&"/var xfs /dev/mapper/vg0-var".to_string()),
        "{mounts:?}"
    );
    let md = d.report("FERRY-MD");
    assert!(
        md.iter()
            .any(|l| l.contains("active raid1") && l.contains("vda2") && l.contains("vdb2")),
        "{md:?}"
    );
    Ok(())
}

/// The library's folder of direct migrations' repositories.
const DIRECT: &str = "direct";

/// Files below `dir` whose path contains `part`.
fn files_under(dir: &std::path::Path, part: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().contains(part) {
                found.push(path);
            }
        }
    }
    found
}

/// Hosts of the [`Net`].
const STORE: usize = 0;
const MANAGER: usize = 1;
const SOURCE_DC: usize = 2;
const TARGET_DC: usize = 3;
/// The replicas' boot servers.
const BOOT_PORTS: [u16; 2] = [8081, 8082];
/// The target data centre's port forwarded to the migrated system's nginx.
const HTTP_PORT: u16 = 8080;

#[tokio::test]
async fn a_bios_web_server_moves_across_firewalls_onto_a_new_uefi_machine_while_a_replica_dies()
-> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    if let Some(tool) = tools_missing() {
        missing(tool);
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let w = work.path();
    let net = Net::create("d", 9, &["st", "mg", "sd", "td"])?;
    net.firewall(SOURCE_DC, OUTBOUND_ONLY)?;
    net.firewall(TARGET_DC, OUTBOUND_ONLY)?;
    net.firewall(MANAGER, &outbound_only_but(&BOOT_PORTS))?;
    let (store_ip, manager_ip) = (net.addr(STORE), net.addr(MANAGER));

    // The store's host: the embedded store alone.
    let data = w.join("store");
    let host_path = ferry_init(
        Some(net.ns(STORE)),
        &data,
        &[
            "--listen",
            &format!("{store_ip}:7443"),
            "--agent-heartbeat",
            "2",
            "--agent-poll",
            "1",
        ],
    )?;
    let host = ManagerConfig {
        carry_jobs: false,
        ..ManagerConfig::load(&host_path)?
    };
    host.save(&host_path)?;
    let _store = ferry_serve(Some(net.ns(STORE)), &host_path, &w.join("store.log"))?;

    // Two manager replicas on the manager's host, each with a boot server and the
    // QEMU provider whose hypervisor is the target data centre.
    let replica = |i: usize| -> Result<(std::path::PathBuf, Proc)> {
        let path = data.join(format!("replica-{i}.yaml"));
        let url = format!("http://{manager_ip}:{}/boot/", BOOT_PORTS[i]);
        let mut config = ManagerConfig {
            embedded: None,
            carry_jobs: true,
            scan_secs: 1.0,
            boot: Some(BootConfig {
                listen: format!("{manager_ip}:{}", BOOT_PORTS[i]).parse()?,
                dir: ramdisk_dir(),
                url,
                append: "panic=-1".into(),
            }),
            ..host.clone()
        };
        config.providers.insert(
            PROVIDER.into(),
            qemu_provider(&w.join("machines"), Some(net.ns(TARGET_DC))),
        );
        config.save(&path)?;
        let serve = ferry_serve(
            Some(net.ns(MANAGER)),
            &path,
            &w.join(format!("replica-{i}.log")),
        )?;
        Ok((path, serve))
    };
    let (first_path, mut first) = replica(0)?;
    let (second_path, second) = replica(1)?;
    let m = Manager::attach(&first_path, Some(net.ns(MANAGER)), "");
    let m2 = Manager::attach(&second_path, Some(net.ns(MANAGER)), "");

    // The source data centre: the web server with its installed agent (its config
    // from the store's host: the agent credential).
    let source_dir = w.join("source");
    std::fs::create_dir_all(&source_dir)?;
    let cd = Manager::attach(&host_path, Some(net.ns(STORE)), "").agent_cd(&source_dir)?;
    let (source, source_id) = source_vm_in(
        &m,
        &cd,
        &source_dir,
        Firmware::Bios,
        Some(net.ns(SOURCE_DC)),
    )
    .await?;

    // ferry migrate onto a machine the provider makes in the target data centre.
    let target = Target::larger_uefi();
    let started = std::time::Instant::now();
    let (job, vm) = start_migration(
        &m,
        w,
        &source_id,
        &target.spec("0.0.0.0", HTTP_PORT),
        "web",
        true,
    )
    .await?;
    let listed: Value = serde_json::from_str(&m.ferry(&["machines", "--json"])?)?;
    assert_eq!(listed[0]["machine"]["name"], job.as_str(), "{listed:#}");
    assert_eq!(listed[0]["running"], true, "{listed:#}");

    wait_job(
        &m,
        &job,
        Duration::from_secs(1800),
        "captured its source",
        |j| j["steps"][0]["status"]["state"] == "done",
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
    drop(source);
    // Direct: the capture is in the job's temporary repository, not the library.
    let job_repo = format!("/library/{DIRECT}/{job}/");
    assert!(!files_under(&data, &job_repo).is_empty(), "no {job_repo}");
    let snapshots = files_under(&data, "/library/snapshots/");
    assert!(snapshots.is_empty(), "{snapshots:?}");

    // The first replica dies in the middle of the deploy; the second finishes it.
    wait_job(&m2, &job, Duration::from_secs(900), "deploying", |j| {
        j["steps"][2]["status"]["state"] == "running"
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
    tokio::time::sleep(Duration::from_secs(20)).await;
    first.kill_hard();
    let killed_ms = ferry_mailbox::time::now_ms();
    let shown = wait_job(&m2, &job, Duration::from_secs(3600), "finished", |j| {
        j["status"] != "running"
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", vm.tail()))?;
    assert_eq!(shown["status"], "succeeded", "{shown:#}\n{}", vm.tail());
    // Deployed, the temporary repository is gone.
    let discarded = &shown["steps"][3];
    assert_eq!(discarded["step"], "discard", "{shown:#}");
    assert!(
        discarded["status"]["outcome"]["objects"].as_u64() >= Some(5),
        "{shown:#}"
    );
    let left = files_under(&data, &job_repo);
    assert!(left.is_empty(), "{left:?}");
    let deploy = &shown["steps"][2];
    // Direct: the deploy followed the capture, sent while the capture still ran.
    let capture = &shown["steps"][0];
    assert!(
        deploy["started_ms"].as_u64() < capture["ended_ms"].as_u64(),
        "the deploy must start before the capture ends: {shown:#}"
    );
    assert!(
        deploy["ended_ms"].as_u64() > Some(killed_ms),
        "the deploy must end after the first replica died: {shown:#}"
    );
    assert_eq!(deploy["attempt"], 1, "{shown:#}");
    let command_id = format!("{job}-deploy-1");
    let sends: Vec<&Value> = shown["events"]
        .as_array()
        .context("events")?
        .iter()
        .filter(|e| e["event"] == "sent" && e["step"] == "deploy")
        .collect();
    assert!(
        !sends.is_empty() && sends.iter().all(|e| e["command_id"] == command_id.as_str()),
        "every send of the deploy is one command: {sends:#?}"
    );
    assert!(second.log().contains("job event"), "{}", second.log());

    let mut d = Deployed {
        vm,
        steps: serde_json::from_value::<Vec<StepTime>>(
            deploy["status"]["outcome"]["steps"].clone(),
        )?,
        to_booted: 0.0,
        http_port: HTTP_PORT,
        netns: Some(net.ns(TARGET_DC).to_string()),
    };
    d.vm.wait_console("FERRY-BOOTED", Duration::from_secs(900))
        .await
        .context("the migrated system's boot report")?;
    d.to_booted = started.elapsed().as_secs_f64();
    // The ramdisk agent ran the deploy once, whichever replica sent it.
    assert_eq!(
        command_runs(&d.vm.console(), &command_id),
        1,
        "{}",
        d.vm.tail()
    );
    check_larger_uefi(&d, &shown, &target).await?;

    // The firewalls are real: the page is served inside the target data centre, and
    // nothing from the manager's or the source's host gets in there.
    let target_ip = net.addr(TARGET_DC);
    assert!(net.connects(TARGET_DC, "127.0.0.1", HTTP_PORT));
    assert!(!net.connects(MANAGER, &target_ip, HTTP_PORT));
    assert!(!net.connects(SOURCE_DC, &target_ip, HTTP_PORT));
    eprintln!(
        "migrated across the firewalls in {:.0} s (command to the migrated system's report)",
        d.to_booted
    );
    drop(second);
    Ok(())
}
