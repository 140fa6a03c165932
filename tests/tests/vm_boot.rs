//! The Ferry ramdisk boots five ways in QEMU (direct kernel — `vmlinux` through its PVH
//! entry, and `vmlinuz` in the static and missing-driver cases —, PXE BIOS over TFTP, PXE
//! UEFI over HTTP from the manager's boot server, ISO BIOS, ISO UEFI), plus static
//! addressing on a network without DHCP and a NIC whose driver was left out. In each,
//! the agent must appear in its mailbox as a ramdisk agent with its disks and NICs,
//! heartbeat, and power the VM off on a `poweroff` command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use ferry_tests::vm::{MAC, Manager, OVMF, Qemu, base_args, ramdisk};
use serde_json::Value;

/// TCG is slow, and two VMs may share the two cores.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Boots a VM, waits for its agent, checks what it reports, powers it off.
async fn boot_case(
    work: &Path,
    manager: &Manager,
    extra: Vec<String>,
    netns: Option<&str>,
) -> Result<(Value, Qemu)> {
    let console = work.join("console.log");
    let mut args = base_args(work, &console)?;
    args.extend(extra);
    let mut vm = Qemu::start(work, &console, &args, netns)?;
    let first = manager.wait_ramdisk_agent(&mut vm, BOOT_TIMEOUT).await?;
    let id = first["id"].as_str().unwrap_or_default().to_string();
    eprintln!("agent {id} reported after {:.1} s", vm.age());
    // Filesystem, RAID and LVM modules load beside the agent; the status says when.
    let agent = manager
        .wait_agent_status(&id, Duration::from_secs(120), |a| {
            let loaded = &a["status"]["boot"]["loaded"];
            ["xfs", "raid1", "dm_mod"]
                .iter()
                .all(|m| loaded.as_array().is_some_and(|l| l.iter().any(|v| v == m)))
        })
        .await?;
    let survey = &agent["status"]["survey"];
    let disks: Vec<&str> = survey["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert!(disks.contains(&"vda"), "disks {disks:?}\n{}", vm.tail());
    let vda = survey["disks"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "vda"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(vda["size_bytes"], 64 * 1024 * 1024);
    let macs: Vec<&str> = survey["nics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["mac"].as_str())
        .collect();
    assert!(macs.contains(&MAC), "nics {macs:?}");
    assert_eq!(agent["identity"]["kind"], "ramdisk");
    let out = manager.ferry(&["poweroff", &id, "--timeout", "120"])?;
    assert!(out.contains("machine powering off"), "{out}");
    let status = vm.wait_exit(Duration::from_secs(120)).await?;
    assert!(status.success(), "QEMU exit {status}\n{}", vm.tail());
    assert!(
        vm.console().contains("ferry: powering off"),
        "{}",
        vm.tail()
    );
    Ok((agent, vm))
}

/// A test's work folder, its manager, the ramdisk folder and personalised boot files.
struct Case {
    work: tempfile::TempDir,
    m: Manager,
    r: PathBuf,
    boot: PathBuf,
}

/// Sets a case up, or `None` when VM tests are skipped.
fn case(netns: Option<&str>) -> Result<Option<Case>> {
    let Some(r) = ramdisk() else { return Ok(None) };
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), netns)?;
    let boot = work.path().join("boot");
    m.boot_files(&boot, "panic=-1")?;
    Ok(Some(Case { work, m, r, boot }))
}

/// QEMU options for a direct kernel boot of `kernel` (`vmlinux` boots through its PVH
/// entry point, `vmlinuz` through the firmware's Linux loader).
fn direct(r: &Path, kernel: &str, initrd: &Path, append: &str) -> Vec<String> {
    vec![
        "-kernel".into(),
        r.join(kernel).to_string_lossy().into(),
        "-initrd".into(),
        initrd.to_string_lossy().into(),
        "-append".into(),
        format!("console=ttyS0,115200 panic=-1 {append}"),
    ]
}

fn netdev_nic(netdev: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        netdev.into(),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={MAC}"),
    ]
}

#[tokio::test]
async fn direct_kernel_boot() -> Result<()> {
    let Some(c) = case(None)? else { return Ok(()) };
    let mut extra = direct(&c.r, "vmlinux", &c.boot.join("initrd.zst"), "");
    extra.extend(netdev_nic("user,id=n0"));
    let (agent, _) = boot_case(c.work.path(), &c.m, extra, None).await?;
    let boot_report = &agent["status"]["boot"];
    assert!(
        boot_report["network"]
            .as_str()
            .unwrap_or("")
            .starts_with("dhcp eth0 10.0.2.15/24"),
        "{boot_report}"
    );
    let loaded: Vec<&str> = boot_report["loaded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .collect();
    for m in ["virtio_net", "virtio_blk", "ext4", "xfs", "raid1", "dm_mod"] {
        assert!(loaded.contains(&m), "{m} not loaded: {loaded:?}");
    }
    Ok(())
}

#[tokio::test]
async fn pxe_bios_over_tftp() -> Result<()> {
    let Some(c) = case(None)? else { return Ok(()) };
    let mut extra = netdev_nic(&format!(
        "user,id=n0,tftp={},bootfile=boot.ipxe",
        c.boot.display()
    ));
    extra.extend(s(&["-boot", "n"]));
    let (_, vm) = boot_case(c.work.path(), &c.m, extra, None).await?;
    // The kernel line came from boot.ipxe (iPXE names the initrd on it).
    assert!(
        vm.console().contains("initrd=initrd.zst console=tty0"),
        "{}",
        vm.tail()
    );
    Ok(())
}

#[tokio::test]
async fn pxe_uefi_over_http_from_the_boot_server() -> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let work = tempfile::tempdir()?;
    let m = Manager::start(work.path(), None)?;
    let mut extra = s(&["-bios", OVMF]);
    extra.extend(netdev_nic(&format!(
        "user,id=n0,bootfile={}boot.ipxe",
        m.boot_url
    )));
    extra.extend(s(&["-boot", "n"]));
    let (agent, _) = boot_case(work.path(), &m, extra, None).await?;
    // The per-machine script put the NIC's MAC on the command line.
    let serve_log = std::fs::read_to_string(work.path().join("serve.log"))?;
    assert!(serve_log.contains("per-machine boot script"), "{serve_log}");
    assert!(
        serve_log.contains(&format!("ferry.iface={MAC}")),
        "{serve_log}"
    );
    assert!(
        agent["status"]["boot"]["network"]
            .as_str()
            .unwrap_or("")
            .contains("eth0")
    );
    Ok(())
}

async fn iso_case(uefi: bool) -> Result<()> {
    let Some(c) = case(None)? else { return Ok(()) };
    let mut extra = Vec::new();
    if uefi {
        extra.extend(s(&["-bios", OVMF]));
    }
    extra.extend(s(&["-cdrom"]));
    extra.push(c.boot.join("ferry.iso").to_string_lossy().into());
    extra.extend(s(&["-boot", "d"]));
    extra.extend(netdev_nic("user,id=n0"));
    boot_case(c.work.path(), &c.m, extra, None).await?;
    Ok(())
}

#[tokio::test]
async fn iso_bios() -> Result<()> {
    iso_case(false).await
}

#[tokio::test]
async fn iso_uefi() -> Result<()> {
    iso_case(true).await
}

/// A network namespace with a tap device at 192.0.2.1 and no DHCP server at all.
struct TapNet {
    ns: String,
}

impl TapNet {
    fn create() -> Result<TapNet> {
        let ns = format!("ferry-vm-{}", std::process::id());
        let ip = |args: &[&str]| -> Result<()> {
            let out = Command::new("ip").args(args).output()?;
            anyhow::ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns])?;
        let net = TapNet { ns: ns.clone() };
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "tuntap", "add", "dev", "ftap0", "mode", "tap"])?;
        ip(&["-n", &ns, "addr", "add", "192.0.2.1/24", "dev", "ftap0"])?;
        ip(&["-n", &ns, "link", "set", "ftap0", "up"])?;
        Ok(net)
    }
}

impl Drop for TapNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

#[tokio::test]
async fn static_addressing_without_dhcp() -> Result<()> {
    if ramdisk().is_none() {
        return Ok(());
    }
    let net = TapNet::create()?;
    let Some(c) = case(Some(&net.ns))? else {
        return Ok(());
    };
    let mut extra = direct(
        &c.r,
        "vmlinuz",
        &c.boot.join("initrd.zst"),
        &format!("ferry.ip=192.0.2.10/24,192.0.2.1 ferry.iface={MAC}"),
    );
    extra.extend(netdev_nic("tap,id=n0,ifname=ftap0,script=no,downscript=no"));
    let (agent, _) = boot_case(c.work.path(), &c.m, extra, Some(&net.ns)).await?;
    assert_eq!(
        agent["status"]["boot"]["network"],
        "static eth0 192.0.2.10/24 via 192.0.2.1"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_nic_driver_is_named() -> Result<()> {
    use ferry_initramfs::build::{self, DriverSet, Inputs};
    let Some(r) = ramdisk() else { return Ok(()) };
    let work = tempfile::tempdir()?;
    // The whole driver set but e1000, from the same kernel and agent.
    let release = std::fs::read_to_string(r.join("ramdisk.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["kernel_release"].as_str().map(str::to_string))
        .expect("target/ferry/ramdisk.json names the kernel release");
    let agent = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-unknown-linux-musl/agent/ferry-agent");
    let inputs = Inputs {
        manifest: ferry_initramfs::manifest::Manifest::parse(ferry_initramfs::manifest::DEFAULT)?,
        modules_dir: Path::new("/lib/modules").join(&release),
        agent,
        config: None,
        drivers: DriverSet::All,
        exclude: vec!["e1000".into()],
        firmware: false,
        firmware_dir: "/lib/firmware".into(),
        level: 1,
    };
    let built = build::assemble(&inputs)?;
    assert!(!built.info.modules.iter().any(|m| m == "e1000"));
    let initrd = work.path().join("no-e1000.zst");
    std::fs::write(&initrd, build::compress(&built.whole()?, 1)?)?;

    let m = Manager::start(work.path(), None)?;
    let boot = work.path().join("boot");
    m.ferry(&[
        "boot-files",
        "--out",
        &boot.to_string_lossy(),
        "--kernel",
        &r.join("vmlinuz").to_string_lossy(),
        "--initrd",
        &initrd.to_string_lossy(),
    ])?;
    let mut extra = direct(&r, "vmlinuz", &boot.join("initrd.zst"), "");
    // First NIC: an Intel e1000 whose driver is missing; second: virtio, which works.
    extra.extend(s(&[
        "-netdev",
        "user,id=n1",
        "-device",
        "e1000,netdev=n1,mac=52:54:00:00:00:01,addr=05",
    ]));
    extra.extend(netdev_nic("user,id=n0"));
    let (agent, vm) = boot_case(work.path(), &m, extra, None).await?;
    let console = vm.console();
    assert!(
        console.contains("MISSING DRIVER") && console.contains("needs e1000"),
        "{}",
        vm.tail()
    );
    let missing = &agent["status"]["boot"]["missing"];
    let named: Vec<&str> = missing
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["modules"].as_array().into_iter().flatten())
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(named, ["e1000"], "{missing}");
    assert!(
        missing[0]["modalias"]
            .as_str()
            .unwrap_or("")
            .starts_with("pci:v00008086d0000100E")
    );
    Ok(())
}
