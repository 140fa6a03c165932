//! The QEMU provider with real QEMU: a machine is made once when asked again (as a
//! second replica would), is switched off, on (from its disks) and reset, listed, and
//! deleted with its disks; bad machine specs and unknown providers are named before
//! anything is made.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_manager::bootserver::BootConfig;
use ferry_manager::config::ManagerConfig;
use ferry_manager::providers::{self, PowerAction, Provider};
use ferry_model::machine::{BootFrom, DiskSpec, MachineFirmware, MachineSpec, NicSpec};
use ferry_tests::procs::{bin, ferry_init};
use ferry_tests::util::missing;
use ferry_tests::vm::qemu_provider;
use serde_json::Value;

fn ferry(config: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(bin("ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("ferry");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn spec(firmware: MachineFirmware) -> MachineSpec {
    MachineSpec {
        provider: "lab".into(),
        cpus: 1,
        memory_mib: 512,
        firmware,
        boot: BootFrom::Pxe,
        disks: vec![DiskSpec { size_gib: 2 }, DiskSpec { size_gib: 1 }],
        nics: vec![NicSpec {
            mac: "52:54:00:3e:00:01".into(),
            forwards: Vec::new(),
        }],
    }
}

async fn running(p: &dyn Provider, name: &str, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = p.list().await.expect("list");
        let on = list.iter().any(|m| m.machine.name == name && m.running);
        if on == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "machine {name} not running={want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_qemu_machine_is_made_once_powered_listed_and_deleted() {
    for tool in ["qemu-system-x86_64", "qemu-img"] {
        if which(tool).is_none() {
            return missing(tool);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let path = ferry_init(None, &d.join("m"), &[]).expect("init");
    let mut config = ManagerConfig::load(&path).expect("config");
    config.boot = Some(BootConfig {
        listen: "127.0.0.1:1".parse().expect("addr"),
        dir: d.join("boot"),
        url: "http://10.0.2.2:1/boot/".into(),
        append: String::new(),
    });
    config
        .providers
        .insert("lab".into(), qemu_provider(&d.join("machines"), None));
    config.save(&path).expect("save");
    let config = ManagerConfig::load(&path).expect("config");
    let lab = providers::open(&config, "lab").expect("provider");

    let (ok, out) = ferry(&path, &["machines"]);
    assert!(ok && out.contains("no machines"), "{out}");

    // Made once: a second replica asking finds it.
    let made = lab
        .ensure("job-1", &spec(MachineFirmware::Uefi))
        .await
        .expect("ensure");
    assert!(made.created, "{made:?}");
    // Ended by its pid however the test ends.
    let _vm = ferry_tests::vm::Qemu::made(&d.join("machines/job-1"));
    assert_eq!(made.macs, vec!["52:54:00:3e:00:01"]);
    let again = lab
        .ensure("job-1", &spec(MachineFirmware::Uefi))
        .await
        .expect("again");
    assert!(!again.created, "{again:?}");
    let folder = d.join("machines/job-1");
    for f in [
        "disk0.qcow2",
        "disk1.qcow2",
        "ovmf-vars.fd",
        "machine.json",
        "qemu.pid",
    ] {
        assert!(folder.join(f).exists(), "{f} missing");
    }
    running(lab.as_ref(), "job-1", true).await;
    let e = lab
        .ensure("job-1", &spec(MachineFirmware::Bios))
        .await
        .expect_err("another spec");
    assert!(e.to_string().contains("another spec"), "{e:#}");

    // Listed, as people and programs read it.
    let (ok, out) = ferry(&path, &["machines", "--json"]);
    assert!(ok, "{out}");
    let listed: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(listed[0]["machine"]["name"], "job-1", "{listed:#}");
    assert_eq!(listed[0]["running"], true);
    assert_eq!(listed[0]["spec"]["disks"][0]["size_gib"], 2);
    let (ok, out) = ferry(&path, &["machines"]);
    assert!(ok && out.contains("job-1") && out.contains(" on "), "{out}");

    // Off, on (from its disks: no network boot this time), reset.
    let (ok, out) = ferry(&path, &["machine", "power", "job-1", "off"]);
    assert!(ok, "{out}");
    running(lab.as_ref(), "job-1", false).await;
    let e = lab
        .power("job-1", PowerAction::Reset)
        .await
        .expect_err("off");
    assert!(e.to_string().contains("is off"), "{e:#}");
    lab.power("job-1", PowerAction::On).await.expect("on");
    running(lab.as_ref(), "job-1", true).await;
    let pid = std::fs::read_to_string(folder.join("qemu.pid")).expect("pid");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("cmdline");
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("once=n"),
        "a second start boots from the disks"
    );
    let (ok, out) = ferry(&path, &["machine", "power", "job-1", "reset"]);
    assert!(ok, "{out}");

    // Deleted with its disks; an unknown machine is named.
    let (ok, out) = ferry(&path, &["machine", "delete", "job-1"]);
    assert!(ok, "{out}");
    assert!(!folder.exists());
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists() || {
            // The pid may be reused; it must not be this machine's QEMU.
            !String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default(),
            )
            .contains("job-1")
        }
    );
    let (ok, out) = ferry(&path, &["machine", "power", "job-1", "on"]);
    assert!(
        !ok && out.contains("no provider holds a machine \"job-1\""),
        "{out}"
    );

    // Bad specs and unknown providers are refused before anything is made.
    for (yaml, words) in [
        (
            "provider: lab\ndisks: [{size_gib: 5}]\nnics: [{mac: '52:54:00:3e:00:02'}]\nram: 4\n",
            "ram",
        ),
        (
            "provider: lab\nmemory_mib: 64\ndisks: []\nnics: [{mac: 'x'}]\n",
            "memory_mib",
        ),
        (
            "provider: lab\ndisks: []\nnics: [{mac: 'x'}]\n",
            "disks: give at least one",
        ),
        (
            "provider: lab\ndisks: [{size_gib: 5}]\nnics: [{mac: 'x'}]\n",
            "nics[0].mac",
        ),
        (
            "provider: cloud\ndisks: [{size_gib: 5}]\nnics: [{mac: '52:54:00:3e:00:02'}]\n",
            "no provider \"cloud\" (it has lab)",
        ),
    ] {
        let file = d.join("spec.yaml");
        std::fs::write(&file, yaml).expect("write");
        let to = format!("new={}", file.display());
        let (ok, out) = ferry(&path, &["migrate", "abc", "--to", &to]);
        assert!(!ok && out.contains(words), "{yaml}: {out}");
    }
    let (ok, out) = ferry(&path, &["migrate", "abc", "--to", "new=/nonexistent.yaml"]);
    assert!(
        !ok && out.contains("reading machine spec /nonexistent.yaml"),
        "{out}"
    );
    assert!(lab.list().await.expect("list").is_empty());
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|p| Path::new(p).join(tool))
        .find(|p| p.is_file())
}
