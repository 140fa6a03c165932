//! A Debian 12 source server in QEMU — two NICs with fixed MACs (one carrying a VLAN,
//! static addresses by ifupdown), three disks (a GPT system disk; RAID1 over the other
//! two, LVM on the array, xfs and ext4 on its volumes), nginx running — surveyed by an
//! installed Ferry agent (from a CD): every one of those facts must appear in `ferry agent show
//! --json`. The running server is then captured through its mailbox (`ferry capture`):
//! both volumes on LVM are read from LVM snapshots that are gone afterwards, and one of
//! them restored on the host matches what the guest put on it. Then the same machine
//! boots the Ferry ramdisk, whose agent must report the same hardware.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_model::survey::Survey;
use ferry_tests::debian::{self, MACS, ROOT_UUID};
use ferry_tests::vm::{Manager, Qemu, captured, qcow2, ramdisk};
use serde_json::Value;

/// The machine: TCG, 2 CPUs, the three disks and two NICs (without a boot method).
fn machine(work: &Path, system: &Path, console: &Path) -> Result<Vec<String>> {
    let mut a = ferry_tests::vm::machine_args(2, console);
    let mut disk = |i: usize, spec: String, serial: &str| {
        a.push("-drive".into());
        a.push(format!("{spec},if=none,id=d{i}"));
        a.push("-device".into());
        a.push(format!("virtio-blk-pci,drive=d{i},serial={serial}"));
    };
    disk(
        0,
        format!("file={},format=raw,snapshot=on", system.display()),
        "SRC-ROOT",
    );
    for (i, (name, serial)) in [
        ("raid-a.qcow2", "SRC-RAID-A"),
        ("raid-b.qcow2", "SRC-RAID-B"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = work.join(name);
        qcow2(&path, "1G")?;
        disk(
            i + 1,
            format!("file={},format=qcow2", path.display()),
            serial,
        );
    }
    a.extend(debian::nic_args());
    Ok(a)
}

#[tokio::test]
async fn a_debian_source_server_is_surveyed_in_full_and_the_ramdisk_sees_the_same_hardware()
-> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let system = debian::source_disk()?;
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let cd = m.agent_cd(work.path())?;

    // 1. The installed system.
    let console = work.path().join("source.log");
    let mut args = machine(work.path(), &system, &console)?;
    args.push("-cdrom".into());
    args.push(cd.to_string_lossy().into());
    let mut vm = Qemu::start(work.path(), &console, &args, None)?;
    let (src_id, src) = m
        .wait_survey(&mut vm, "installed", Duration::from_secs(420), |s| {
            !s.os.storage.md_arrays.is_empty()
                && s.os
                    .storage
                    .filesystems
                    .iter()
                    .any(|f| f.fstype == "xfs" && !f.mountpoints.is_empty())
                && s.apps.listening.iter().any(|l| l.port == 80)
        })
        .await?;
    check_source(&src)?;
    capture_from_lvm_snapshots(&m, &src_id, work.path()).await?;
    drop(vm);

    // 2. The same machine in the Ferry ramdisk.
    let boot = work.path().join("boot");
    m.boot_files(&boot, "panic=-1")?;
    let console = work.path().join("ramdisk.log");
    let mut args = machine(work.path(), &system, &console)?;
    // The same CD drive, so the hardware is the same.
    args.push("-cdrom".into());
    args.push(cd.to_string_lossy().into());
    args.extend(ferry_tests::vm::ramdisk_boot(&boot));
    let mut vm = Qemu::start(work.path(), &console, &args, None)?;
    let (id, rd) = m
        .wait_survey(&mut vm, "ramdisk", Duration::from_secs(300), |s| {
            s.disks.len() == 3 && s.hardware.cpu.threads >= 1
        })
        .await?;
    let hw = |s: &Survey| {
        let disks: Vec<(String, u64, Option<String>)> = s
            .disks
            .iter()
            .map(|d| (d.name.clone(), d.size_bytes, d.serial.clone()))
            .collect();
        let nics: Vec<(String, Option<String>)> = s
            .nics
            .iter()
            .map(|n| (n.mac.clone(), n.pci_address.clone()))
            .collect();
        let pci: Vec<(String, String, String)> = s
            .hardware
            .pci
            .iter()
            .map(|p| (p.address.clone(), p.vendor_id.clone(), p.device_id.clone()))
            .collect();
        (
            disks,
            nics,
            pci,
            s.hardware.cpu.threads,
            s.hardware.platform.hypervisor.clone(),
        )
    };
    assert_eq!(hw(&rd), hw(&src), "the ramdisk sees other hardware");
    assert_eq!(rd.os.init, "ferry");
    assert_eq!(rd.validate(), Vec::<String>::new());
    m.ferry(&["poweroff", &id, "--timeout", "120"])?;
    vm.wait_exit(Duration::from_secs(120)).await?;
    Ok(())
}

/// Live capture through the mailbox of the two filesystems on LVM: each is read from
/// an LVM snapshot, the snapshots are gone afterwards, and a volume restored on the
/// host holds exactly what the guest put on it (a copy of the root's /usr/share/doc).
async fn capture_from_lvm_snapshots(m: &Manager, id: &str, work: &Path) -> Result<()> {
    let out = m.ferry(&[
        "capture",
        id,
        "--image",
        "src",
        "--path",
        "/srv/logs",
        "--path",
        "/srv/web",
        "--json",
        "--timeout",
        "900",
    ])?;
    let v: Value = serde_json::from_str(&out).context("capture --json")?;
    for path in ["/srv/logs", "/srv/web"] {
        let fs = captured(&v, path)?;
        anyhow::ensure!(fs["consistency"] == "lvm-snapshot", "{path}: {fs:#}");
        anyhow::ensure!(fs["files"].as_u64() > Some(100), "{path}: {fs:#}");
    }
    m.ensure_no_snapshots(id)?;

    let to = work.join("restored-logs");
    let report = m.restore("src", "/srv/logs", &to).await?;
    anyhow::ensure!(report.error_count == 0, "{report:?}");
    let root = debian::root_tree()?;
    let diffs: Vec<String> =
        ferry_tests::fidelity::compare(&root.join("usr/share/doc"), &to.join("doc"))?
            .into_iter()
            .filter(|d| !d.contains(": atime "))
            .collect();
    anyhow::ensure!(
        diffs.is_empty(),
        "restored /srv/logs/doc differs: {diffs:#?}"
    );
    Ok(())
}

/// Every fact of the source server the issue names.
fn check_source(s: &Survey) -> Result<()> {
    let fail = |what: &str| -> Result<()> { bail!("{what} is wrong in the survey:\n{s:#?}") };
    if !s.validate().is_empty() {
        bail!("inconsistent survey: {:?}", s.validate());
    }
    // Hardware.
    let disks: Vec<(&str, Option<&str>)> = s
        .disks
        .iter()
        .map(|d| (d.name.as_str(), d.serial.as_deref()))
        .collect();
    if disks
        != [
            ("vda", Some("SRC-ROOT")),
            ("vdb", Some("SRC-RAID-A")),
            ("vdc", Some("SRC-RAID-B")),
        ]
    {
        fail("disks")?;
    }
    if s.disks[0].size_bytes != 3 << 30
        || s.disks
            .iter()
            .any(|d| d.transport.as_deref() != Some("virtio"))
    {
        fail("disk sizes or transports")?;
    }
    let macs: Vec<&str> = s.nics.iter().map(|n| n.mac.as_str()).collect();
    if macs != MACS
        || s.nics
            .iter()
            .any(|n| n.driver.as_deref() != Some("virtio_net") || n.pci_address.is_none())
    {
        fail("NICs")?;
    }
    if s.hardware.cpu.threads != 2 || s.hardware.platform.hypervisor.is_none() {
        fail("CPU or platform")?;
    }
    if !s
        .hardware
        .pci
        .iter()
        .any(|p| p.vendor_id == "1af4" && p.driver.as_deref() == Some("virtio-pci"))
    {
        fail("PCI devices")?;
    }
    // OS.
    if s.os.distro.id != "debian" || s.os.distro.version_id != "12" || s.os.init != "systemd" {
        fail("distribution or init")?;
    }
    if s.os.boot_loader.as_ref().map(|b| b.kind.as_str()) != Some("grub") {
        fail("boot loader")?;
    }
    let net = &s.os.network;
    let iface = |n: &str| net.interfaces.iter().find(|i| i.name == n);
    // (QEMU's network also hands out IPv6 addresses by SLAAC.)
    if !iface("eth0").is_some_and(|i| i.addresses.iter().any(|a| a == "10.0.2.15/24")) {
        fail("eth0 address")?;
    }
    let vlan = iface("eth1.100").context("no eth1.100")?;
    if (
        vlan.kind.as_str(),
        vlan.vlan_id,
        vlan.link.as_deref(),
        vlan.addresses.clone(),
    ) != (
        "vlan",
        Some(100),
        Some("eth1"),
        vec!["192.0.2.20/24".to_string()],
    ) {
        fail("VLAN eth1.100")?;
    }
    if !net
        .routes
        .iter()
        .any(|r| r.dst == "default" && r.gateway.as_deref() == Some("10.0.2.2"))
    {
        fail("default route")?;
    }
    if net.dns.nameservers != ["10.0.2.3"] || net.dns.search != ["example.test"] {
        fail("DNS")?;
    }
    if !net.managed_by.iter().any(|m| {
        m.system == "ifupdown"
            && m.enabled
            && m.files.contains(&"/etc/network/interfaces".to_string())
    }) {
        fail("network configuration system")?;
    }
    let st = &s.os.storage;
    let vda = st
        .partition_tables
        .iter()
        .find(|t| t.disk == "vda")
        .context("no vda table")?;
    let parts: Vec<(u32, &str, Option<&str>)> = vda
        .partitions
        .iter()
        .map(|p| (p.number, p.type_id.as_str(), p.label.as_deref()))
        .collect();
    if vda.kind != "gpt"
        || parts
            != [
                (1, "21686148-6449-6e6f-744e-656564454649", Some("bios")),
                (2, "0fc63daf-8483-4772-8e79-3d69d8477de4", Some("root")),
            ]
    {
        fail("vda partition table")?;
    }
    let md = &st.md_arrays[0];
    if (
        md.device.as_str(),
        md.level.as_str(),
        md.members.clone(),
        md.raid_disks,
    ) != (
        "md0",
        "raid1",
        vec!["vdb".to_string(), "vdc".to_string()],
        2,
    ) {
        fail("RAID1")?;
    }
    if !st
        .lvm
        .pvs
        .iter()
        .any(|p| p.device == "/dev/md0" && p.vg == "data")
    {
        fail("LVM PV")?;
    }
    let lvs: Vec<(&str, &str)> = st
        .lvm
        .lvs
        .iter()
        .map(|l| (l.vg.as_str(), l.name.as_str()))
        .collect();
    if !lvs.contains(&("data", "web")) || !lvs.contains(&("data", "logs")) {
        fail("LVM LVs")?;
    }
    let mounted = |fstype: &str, label: &str, at: &str| {
        st.filesystems.iter().any(|f| {
            f.fstype == fstype
                && f.label.as_deref() == Some(label)
                && f.mountpoints.iter().any(|m| m == at)
        })
    };
    if !mounted("xfs", "web", "/srv/web")
        || !mounted("ext4", "logs", "/srv/logs")
        || !mounted("ext4", "root", "/")
    {
        fail("filesystems")?;
    }
    if !st
        .filesystems
        .iter()
        .any(|f| f.uuid.as_deref() == Some(ROOT_UUID) && f.used_bytes.is_some_and(|u| u > 0))
    {
        fail("root filesystem UUID or usage")?;
    }
    if !st
        .fstab
        .iter()
        .any(|f| f.spec == "LABEL=web" && f.file == "/srv/web" && f.vfstype == "xfs")
    {
        fail("fstab")?;
    }
    // Applications.
    let apps = &s.apps;
    if !apps.packages.iter().any(|p| p.name == "nginx-light")
        || apps.package_manager.as_deref() != Some("dpkg")
    {
        fail("packages")?;
    }
    if !apps.services.iter().any(|u| u == "nginx.service") {
        fail("enabled services")?;
    }
    if !apps.listening.iter().any(|l| {
        l.port == 80
            && l.service.as_deref() == Some("nginx.service")
            && l.process.as_deref() == Some("nginx")
    }) {
        fail("nginx listener")?;
    }
    if !apps
        .configs
        .iter()
        .any(|c| c.app == "nginx" && c.binds.iter().any(|b| b == "80"))
    {
        fail("nginx config")?;
    }
    Ok(())
}
