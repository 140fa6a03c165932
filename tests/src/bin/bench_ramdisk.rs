//! `cargo xtask bench ramdisk`: the Ferry ramdisk's size and its boot time on each
//! boot path — seconds from starting QEMU (TCG) to the agent's first heartbeat in the
//! manager's store — next to the sizes of other projects' ramdisks. Appends a table to
//! `docs/benchmarks.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_tests::bench::{GuestRig, machine, now_utc};
use ferry_tests::vm::{MAC, Manager, OVMF, ramdisk_dir};

const RUNS: usize = 2;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// QEMU options for one boot path.
fn path_args(path: &str, r: &Path, boot: &Path, m: &Manager) -> Vec<String> {
    let nic = |netdev: String| {
        vec![
            "-netdev".to_string(),
            netdev,
            "-device".into(),
            format!("virtio-net-pci,netdev=n0,mac={MAC}"),
        ]
    };
    let mut a = Vec::new();
    match path {
        "direct kernel (vmlinux, PVH)" | "direct kernel (vmlinuz)" => {
            let kernel = if path.contains("PVH") {
                "vmlinux"
            } else {
                "vmlinuz"
            };
            a.extend(s(&["-kernel"]));
            a.push(r.join(kernel).to_string_lossy().into());
            a.extend(s(&["-initrd"]));
            a.push(boot.join("initrd.zst").to_string_lossy().into());
            a.extend(s(&["-append", "console=ttyS0,115200 panic=-1"]));
            a.extend(nic("user,id=n0".into()));
        }
        "PXE BIOS (TFTP)" => {
            a.extend(nic(format!(
                "user,id=n0,tftp={},bootfile=boot.ipxe",
                boot.display()
            )));
            a.extend(s(&["-boot", "n"]));
        }
        "PXE UEFI (HTTP boot server)" => {
            a.extend(s(&["-bios", OVMF]));
            a.extend(nic(format!("user,id=n0,bootfile={}boot.ipxe", m.boot_url)));
            a.extend(s(&["-boot", "n"]));
        }
        iso => {
            if iso.contains("UEFI") {
                a.extend(s(&["-bios", OVMF]));
            }
            a.extend(s(&["-cdrom"]));
            a.push(boot.join("ferry.iso").to_string_lossy().into());
            a.extend(s(&["-boot", "d"]));
            a.extend(nic("user,id=n0".into()));
        }
    }
    a
}

/// Seconds from QEMU start to the first heartbeat object in the manager's store.
async fn first_heartbeat(path: &str) -> Result<f64> {
    let r = ramdisk_dir();
    let g = GuestRig::new()?;
    let m = &g.m;
    let mailboxes = m.data.join("store/ferry/mailboxes");
    let mut vm = g.start(&path_args(path, &r, &g.boot, m))?;
    let t = Instant::now();
    let secs = loop {
        let beat = std::fs::read_dir(&mailboxes)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().join("heartbeat.json").exists());
        if beat {
            break t.elapsed().as_secs_f64();
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!("{path}: no heartbeat in 300 s:\n{}", vm.tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let id = std::fs::read_dir(&mailboxes)?
        .flatten()
        .next()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .context("a mailbox")?;
    m.ferry(&["poweroff", &id, "--timeout", "120"])?;
    vm.wait_exit(Duration::from_secs(120)).await?;
    Ok(secs)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let r = ramdisk_dir();
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.join("ramdisk.json"))
            .context("target/ferry/ramdisk.json (run `cargo xtask ramdisk`)")?,
    )?;
    let mb = |k: &str| report[k].as_f64().unwrap_or(0.0) / 1e6;
    let mut rows = Vec::new();
    for path in [
        "direct kernel (vmlinux, PVH)",
        "direct kernel (vmlinuz)",
        "PXE BIOS (TFTP)",
        "PXE UEFI (HTTP boot server)",
        "ISO BIOS",
        "ISO UEFI",
    ] {
        let mut times = Vec::new();
        for run in 0..RUNS {
            let secs = first_heartbeat(path).await?;
            eprintln!("{path} run {}: first heartbeat after {secs:.1} s", run + 1);
            times.push(secs);
        }
        times.sort_by(f64::total_cmp);
        rows.push((path, times));
    }
    let mut t = format!(
        "\n### Ramdisk — {} UTC, {}, QEMU TCG (no KVM), guest 1 vCPU 1 GiB\n\n\
         Kernel {} ({:.1} MB), {} modules (driver set `{}`), {} tools, zstd -{}.\n\n\
         | ramdisk | compressed | uncompressed | size vs Ferry |\n|---|---|---|---|\n\
         | **Ferry** (all storage + network drivers, LVM/RAID/fs tools, agent) | **{:.1} MB** ({:.2}× the 40 MB target) | {:.1} MB | 1× |\n\
         | ironic-python-agent TinyIPA (anchor) | 91.9 MB initramfs | — | {:.1}× |\n\
         | Tinkerbell HookOS (anchor) | ≈ 180 MB | — | {:.1}× |\n\
         | Relax-and-Recover rescue image (anchor) | 100–650 MB | — | {:.1}–{:.1}× |\n\n\
         | boot path | first heartbeat after QEMU start (best / worst of {RUNS}) | worst vs the 10 s target |\n|---|---|---|\n",
        now_utc(),
        machine(),
        report["kernel_release"].as_str().unwrap_or("?"),
        mb("kernel_bytes"),
        report["modules"],
        report["drivers"].as_str().unwrap_or("?"),
        report["tools"].as_array().map_or(0, |a| a.len()),
        report["zstd_level"],
        mb("compressed_bytes"),
        mb("compressed_bytes") / 40.0,
        mb("uncompressed_bytes"),
        91.9 / mb("compressed_bytes"),
        180.0 / mb("compressed_bytes"),
        100.0 / mb("compressed_bytes"),
        650.0 / mb("compressed_bytes"),
    );
    for (path, times) in &rows {
        t.push_str(&format!(
            "| {path} | {:.1} s / {:.1} s | {:.2}× |\n",
            times[0],
            times[times.len() - 1],
            times[times.len() - 1] / 10.0
        ));
    }
    t.push_str(&format!(
        "\n`vmlinux` is the same kernel unpacked ({:.1} MB), which QEMU boots through its PVH \
         entry point; `vmlinuz` goes through the firmware's Linux loader and the kernel's own \
         xz decompressor, which takes about 4 s on TCG.\n",
        mb("vmlinux_bytes")
    ));
    print!("{t}");
    ferry_tests::bench::append(&t)?;
    Ok(())
}
