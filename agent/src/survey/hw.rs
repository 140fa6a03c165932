//! Hardware: CPU, firmware, SMBIOS identity, hypervisor and cloud, PCI devices, disks
//! and NICs, from /proc, /sys and CPUID.

use std::collections::{BTreeSet, HashMap, HashSet};

use ferry_model::survey::{
    BootMode, Cpu, Disk, Firmware, Hardware, Nic, PciDevice, Platform, SystemId,
};

use super::{Gaps, Host};

/// Where Debian, Fedora and others keep the PCI ID database.
const PCI_IDS: [&str; 3] = [
    "/usr/share/misc/pci.ids",
    "/usr/share/hwdata/pci.ids",
    "/usr/share/pci.ids",
];

/// CPU, firmware, SMBIOS, platform and PCI devices.
pub fn hardware(host: &Host, gaps: &mut Gaps) -> Hardware {
    let cpu = match host.read_raw("/proc/cpuinfo") {
        Ok(text) => cpu(&text),
        Err(e) => {
            gaps.note("cpu", format!("/proc/cpuinfo: {e}"));
            Cpu::default()
        }
    };
    if !host.exists("/sys/class/dmi/id") {
        gaps.note(
            "smbios",
            "/sys/class/dmi/id is missing (no SMBIOS tables, or not x86)",
        );
    }
    let dmi = |f: &str| {
        host.read(&format!("/sys/class/dmi/id/{f}"))
            .filter(|v| !is_placeholder(v))
    };
    let system = SystemId {
        vendor: dmi("sys_vendor"),
        product: dmi("product_name"),
        version: dmi("product_version"),
        serial: dmi("product_serial"),
        uuid: dmi("product_uuid").map(|u| u.to_lowercase()),
        asset_tag: dmi("chassis_asset_tag"),
    };
    let firmware = Firmware {
        mode: boot_mode(host),
        secure_boot: secure_boot(host),
        vendor: dmi("bios_vendor"),
        version: dmi("bios_version"),
        date: dmi("bios_date"),
    };
    let platform = platform(
        cpuid_hypervisor().as_deref(),
        host.read("/sys/hypervisor/type").as_deref(),
        &system,
        firmware.vendor.as_deref(),
    );
    let mut pci = pci_devices(host);
    if pci.is_empty() {
        gaps.note("pci", "/sys/bus/pci/devices lists no device");
    }
    match PCI_IDS.iter().find_map(|p| host.read_raw(p).ok()) {
        Some(db) => name_pci(&mut pci, &db),
        None => gaps.note(
            "pci names",
            "no pci.ids database (Debian: pci.ids); devices carry IDs only",
        ),
    }
    Hardware {
        cpu,
        firmware,
        system,
        platform,
        pci,
    }
}

/// Values firmware vendors leave in unset SMBIOS fields.
fn is_placeholder(v: &str) -> bool {
    let l = v.to_ascii_lowercase();
    [
        "to be filled by o.e.m.",
        "default string",
        "not specified",
        "system serial number",
        "none",
        "0",
    ]
    .contains(&l.as_str())
}

/// Sockets, cores and threads from `/proc/cpuinfo`.
pub fn cpu(text: &str) -> Cpu {
    let mut c = Cpu::default();
    let mut packages = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut package = String::new();
    let mut cores_field = 0u32;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => c.threads += 1,
            "vendor_id" if c.vendor.is_empty() => c.vendor = v.to_string(),
            "model name" if c.model.is_empty() => c.model = v.to_string(),
            "physical id" => {
                package = v.to_string();
                packages.insert(package.clone());
            }
            "core id" => {
                cores.insert((package.clone(), v.to_string()));
            }
            "cpu cores" => cores_field = v.parse().unwrap_or(0),
            "flags" => c.virtualization |= v.split_whitespace().any(|f| f == "vmx" || f == "svm"),
            _ => {}
        }
    }
    c.sockets = (packages.len() as u32).max(1);
    c.cores = match cores.len() as u32 {
        0 if cores_field > 0 => cores_field * c.sockets,
        0 => c.threads,
        n => n,
    };
    c
}

/// UEFI when the kernel booted through it.
pub fn boot_mode(host: &Host) -> BootMode {
    if host.exists("/sys/firmware/efi") {
        BootMode::Uefi
    } else if host.exists("/sys/firmware") {
        BootMode::Bios
    } else {
        BootMode::Unknown
    }
}

/// The `SecureBoot` EFI variable (4 attribute bytes, then the value).
fn secure_boot(host: &Host) -> Option<bool> {
    const VAR: &str = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";
    let bytes = std::fs::read(host.path(VAR)).ok()?;
    bytes.get(4).map(|b| *b == 1)
}

/// The hypervisor's CPUID signature (leaf 0x40000000), when the CPU says it runs under
/// one (leaf 1, ECX bit 31).
fn cpuid_hypervisor() -> Option<String> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        let leaf1 = __cpuid(1);
        if leaf1.ecx & (1 << 31) == 0 {
            return None;
        }
        // Leaf 0x40000000 is reserved for hypervisors.
        let r = __cpuid(0x4000_0000);
        let bytes: Vec<u8> = [r.ebx, r.ecx, r.edx]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        Some(
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\0')
                .to_string(),
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Hypervisor and cloud from the CPUID signature, `/sys/hypervisor/type` and SMBIOS.
pub fn platform(
    cpuid: Option<&str>,
    sys_hypervisor: Option<&str>,
    system: &SystemId,
    bios_vendor: Option<&str>,
) -> Platform {
    let mut p = Platform::default();
    if let Some(sig) = cpuid {
        p.evidence.push(format!("cpuid: {sig}"));
        p.hypervisor = match sig {
            "KVMKVMKVM" => Some("kvm"),
            "TCGTCGTCGTCG" => Some("qemu"),
            "Microsoft Hv" => Some("hyper-v"),
            "VMwareVMware" => Some("vmware"),
            "XenVMMXenVMM" => Some("xen"),
            "VBoxVBoxVBox" => Some("virtualbox"),
            " lrpepyh  vr" | "prl hyperv  " => Some("parallels"),
            "bhyve bhyve " => Some("bhyve"),
            "ACRNACRNACRN" => Some("acrn"),
            _ => Some("unknown"),
        }
        .map(str::to_string);
    }
    if let Some(t) = sys_hypervisor {
        p.evidence.push(format!("/sys/hypervisor/type: {t}"));
        if t == "xen" {
            p.hypervisor = Some("xen".into());
        }
    }
    let vendor = system.vendor.as_deref().unwrap_or("");
    let product = system.product.as_deref().unwrap_or("");
    let tag = system.asset_tag.as_deref().unwrap_or("");
    let bios = bios_vendor.unwrap_or("");
    let dmi_hypervisor = match (vendor, product, bios) {
        ("QEMU", _, _) | (_, _, "SeaBIOS") if p.hypervisor.is_none() => Some("qemu"),
        ("VMware, Inc.", _, _) => Some("vmware"),
        ("innotek GmbH", _, _) | (_, "VirtualBox", _) => Some("virtualbox"),
        ("Microsoft Corporation", "Virtual Machine", _) => Some("hyper-v"),
        ("Xen", _, _) | (_, _, "Xen") => Some("xen"),
        _ => None,
    };
    if p.hypervisor.is_none()
        && let Some(h) = dmi_hypervisor
    {
        p.evidence.push(format!("smbios: {vendor} {product}"));
        p.hypervisor = Some(h.into());
    }
    let cloud = if vendor == "Amazon EC2"
        || bios == "Amazon EC2"
        || product.starts_with("HVM domU") && bios.contains("amazon")
    {
        Some("ec2")
    } else if product == "Google Compute Engine" || vendor == "Google" {
        Some("gce")
    } else if tag == "7783-7084-3265-9085-8269-3286-77" {
        Some("azure")
    } else if product.starts_with("OpenStack") || vendor.starts_with("OpenStack") {
        Some("openstack")
    } else if vendor == "DigitalOcean" {
        Some("digitalocean")
    } else if vendor == "Hetzner" {
        Some("hetzner")
    } else if tag == "OracleCloud.com" {
        Some("oracle")
    } else if vendor == "Alibaba Cloud" {
        Some("alibaba")
    } else if vendor == "Scaleway" {
        Some("scaleway")
    } else {
        None
    };
    if let Some(c) = cloud {
        p.evidence.push(format!(
            "smbios: vendor {vendor:?}, product {product:?}, asset tag {tag:?}"
        ));
        p.cloud = Some(c.into());
    }
    p
}

fn hex_id(v: Option<String>, digits: usize) -> String {
    let v = v.unwrap_or_default();
    let v = v.trim_start_matches("0x");
    format!("{:0>digits$}", v.to_ascii_lowercase())
}

/// Every device under `/sys/bus/pci/devices`, by address.
pub fn pci_devices(host: &Host) -> Vec<PciDevice> {
    host.list("/sys/bus/pci/devices")
        .into_iter()
        .map(|address| {
            let f = |name: &str| host.read(&format!("/sys/bus/pci/devices/{address}/{name}"));
            PciDevice {
                vendor_id: hex_id(f("vendor"), 4),
                device_id: hex_id(f("device"), 4),
                subsystem_vendor_id: hex_id(f("subsystem_vendor"), 4),
                subsystem_device_id: hex_id(f("subsystem_device"), 4),
                class: hex_id(f("class"), 6),
                driver: host.link_name(&format!("/sys/bus/pci/devices/{address}/driver")),
                modalias: f("modalias").unwrap_or_default(),
                address,
                ..Default::default()
            }
        })
        .collect()
}

/// Fills vendor, device and class names from a pci.ids database, reading only the
/// entries these devices need.
pub fn name_pci(devices: &mut [PciDevice], db: &str) {
    let vendors: HashSet<&str> = devices.iter().map(|d| d.vendor_id.as_str()).collect();
    let mut vendor_names: HashMap<String, String> = HashMap::new();
    let mut device_names: HashMap<(String, String), String> = HashMap::new();
    let mut class_names: HashMap<String, String> = HashMap::new();
    let mut subclass_names: HashMap<String, String> = HashMap::new();
    let mut vendor: Option<String> = None;
    let mut class: Option<String> = None;
    for line in db.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("C ") {
            vendor = None;
            let (id, name) = rest.split_once(' ').unwrap_or((rest, ""));
            class_names.insert(id.to_string(), name.trim().to_string());
            class = Some(id.to_string());
        } else if !line.starts_with('\t') {
            class = None;
            let (id, name) = line.split_once(' ').unwrap_or((line, ""));
            vendor = vendors.contains(id).then(|| id.to_string());
            if let Some(v) = &vendor {
                vendor_names.insert(v.clone(), name.trim().to_string());
            }
        } else if !line.starts_with("\t\t") {
            let rest = &line[1..];
            let (id, name) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(v) = &vendor {
                device_names.insert((v.clone(), id.to_string()), name.trim().to_string());
            } else if let Some(c) = &class {
                subclass_names.insert(format!("{c}{id}"), name.trim().to_string());
            }
        }
    }
    for d in devices {
        d.vendor_name = vendor_names.get(&d.vendor_id).cloned();
        d.device_name = device_names
            .get(&(d.vendor_id.clone(), d.device_id.clone()))
            .cloned();
        d.class_name = d
            .class
            .get(..4)
            .and_then(|sub| subclass_names.get(sub))
            .or_else(|| d.class.get(..2).and_then(|c| class_names.get(c)))
            .cloned();
    }
}

/// How a block device is attached, from its path in sysfs.
pub fn transport(sys_path: &str) -> Option<&'static str> {
    let p = sys_path;
    Some(if p.contains("/nvme/") {
        "nvme"
    } else if p.contains("/usb") {
        "usb"
    } else if p.contains("/virtio") {
        "virtio"
    } else if p.contains("/mmc_host/") {
        "mmc"
    } else if p.contains("/vbd-") || p.contains("/xen/") {
        "xen"
    } else if p.contains("/end_device-") || p.contains("/sas_") {
        "sas"
    } else if p.contains("/ata") {
        "sata"
    } else if p.contains("/host") && p.contains("/target") {
        "scsi"
    } else {
        return None;
    })
}

/// Whole disks with media (no loop, RAM, device-mapper, md, zram, floppy or optical
/// devices, no empty card readers).
pub fn disks(host: &Host) -> Vec<Disk> {
    let tables = super::holds::Tables::read(host);
    host.list("/sys/block")
        .into_iter()
        .filter(|name| {
            !["loop", "ram", "dm-", "md", "zram", "sr", "nbd", "fd"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .filter_map(|name| {
            let base = format!("/sys/block/{name}");
            let f = |file: &str| host.read(&format!("{base}/{file}"));
            let sectors: u64 = f("size")?.parse().ok().filter(|s| *s > 0)?;
            let num = |file: &str| f(file).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0);
            let sys_path = host.link(&base).unwrap_or_default();
            Some(Disk {
                size_bytes: sectors * 512,
                model: f("device/model"),
                serial: f("device/serial").or_else(|| f("serial")),
                // virtio puts its numeric vendor id here, not a name.
                vendor: f("device/vendor").filter(|v| !v.starts_with("0x")),
                wwn: f("wwid").or_else(|| f("device/wwid")),
                logical_sector: num("queue/logical_block_size"),
                physical_sector: num("queue/physical_block_size"),
                rotational: f("queue/rotational").as_deref() == Some("1"),
                removable: f("removable").as_deref() == Some("1"),
                transport: transport(&sys_path).map(str::to_string),
                in_use: super::holds::holds(host, &tables, &name).describe(),
                name,
            })
        })
        .collect()
}

/// Network interfaces backed by a device (with a hardware address).
pub fn nics(host: &Host) -> Vec<Nic> {
    host.list("/sys/class/net")
        .into_iter()
        .filter_map(|name| {
            let base = format!("/sys/class/net/{name}");
            let f = |file: &str| host.read(&format!("{base}/{file}"));
            let mac = f("address")?;
            if name == "lo" || mac == "00:00:00:00:00:00" || f("type").as_deref() != Some("1") {
                return None;
            }
            // Virtual interfaces (bridges, VLANs, bonds) have no `device`.
            let device = std::fs::canonicalize(host.path(&format!("{base}/device"))).ok()?;
            // A virtio NIC's device is `…/0000:00:03.0/virtio0`: take the PCI function.
            let pci_address = device
                .iter()
                .rev()
                .filter_map(|c| c.to_str())
                .find(|c| is_pci_address(c))
                .map(str::to_string);
            Some(Nic {
                driver: host.link_name(&format!("{base}/device/driver")),
                up: f("operstate").as_deref() == Some("up"),
                permanent_mac: permanent_mac(host, &name).filter(|p| *p != mac),
                pci_address,
                speed_mbps: f("speed")
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|s| *s > 0)
                    .map(|s| s as u32),
                link: f("carrier").as_deref() == Some("1"),
                mac,
                name,
            })
        })
        .collect()
}

/// `dddd:bb:dd.f`.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| [4, 7, 10].contains(&i) || c.is_ascii_hexdigit())
}

/// The burnt-in MAC from the driver (`ETHTOOL_GPERMADDR`); only on the live root.
#[allow(unsafe_code)]
fn permanent_mac(host: &Host, iface: &str) -> Option<String> {
    if host.root != std::path::Path::new("/") || iface.len() >= libc::IFNAMSIZ {
        return None;
    }
    const ETHTOOL_GPERMADDR: u32 = 0x20;
    #[repr(C)]
    struct PermAddr {
        cmd: u32,
        size: u32,
        data: [u8; 32],
    }
    let mut req = PermAddr {
        cmd: ETHTOOL_GPERMADDR,
        size: 32,
        data: [0; 32],
    };
    // SAFETY: plain C structs, zero-initialised; the socket is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut req as *mut PermAddr).cast();
        let rc = libc::ioctl(fd, libc::SIOCETHTOOL as _, &mut ifr);
        libc::close(fd);
        if rc < 0 || req.size != 6 || req.data[..6].iter().all(|b| *b == 0) {
            return None;
        }
    }
    Some(
        req.data[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::{fixture, host, put};

    #[test]
    fn counts_sockets_cores_and_threads() {
        let c = cpu(&fixture("cpuinfo-epyc-vm.txt"));
        assert_eq!((c.sockets, c.cores, c.threads), (1, 2, 2), "{c:?}");
        assert_eq!(c.vendor, "AuthenticAMD");
        assert_eq!(c.model, "AMD EPYC");
        assert!(!c.virtualization, "this VM offers no SVM");
        // Two sockets of two cores with two threads each, SVM offered.
        let mut text = String::new();
        for t in 0..8 {
            text.push_str(&format!(
                "processor\t: {t}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nphysical id\t: {}\ncore id\t\t: {}\ncpu cores\t: 2\nflags\t\t: fpu svm lm\n\n",
                t / 4,
                (t / 2) % 2
            ));
        }
        let c = cpu(&text);
        assert_eq!((c.sockets, c.cores, c.threads), (2, 4, 8), "{c:?}");
        assert!(c.virtualization);
    }

    #[test]
    fn tells_hypervisors_and_clouds_apart() {
        let sys = |v: &str, p: &str, tag: &str| SystemId {
            vendor: Some(v.into()),
            product: Some(p.into()),
            asset_tag: Some(tag.into()),
            ..Default::default()
        };
        let p = platform(
            Some("KVMKVMKVM"),
            None,
            &sys("Amazon EC2", "m5.large", ""),
            None,
        );
        assert_eq!(
            (p.hypervisor.as_deref(), p.cloud.as_deref()),
            (Some("kvm"), Some("ec2"))
        );
        let p = platform(
            Some("Microsoft Hv"),
            None,
            &sys(
                "Microsoft Corporation",
                "Virtual Machine",
                "7783-7084-3265-9085-8269-3286-77",
            ),
            None,
        );
        assert_eq!(
            (p.hypervisor.as_deref(), p.cloud.as_deref()),
            (Some("hyper-v"), Some("azure"))
        );
        let p = platform(
            None,
            None,
            &sys("QEMU", "Standard PC (i440FX + PIIX, 1996)", ""),
            Some("SeaBIOS"),
        );
        assert_eq!((p.hypervisor.as_deref(), p.cloud), (Some("qemu"), None));
        let p = platform(
            Some("KVMKVMKVM"),
            None,
            &sys("OpenStack Foundation", "OpenStack Nova", ""),
            None,
        );
        assert_eq!(p.cloud.as_deref(), Some("openstack"));
        let p = platform(None, Some("xen"), &sys("Xen", "HVM domU", ""), Some("Xen"));
        assert_eq!(p.hypervisor.as_deref(), Some("xen"));
        let p = platform(
            None,
            None,
            &sys("Dell Inc.", "PowerEdge R640", ""),
            Some("Dell Inc."),
        );
        assert_eq!((p.hypervisor, p.cloud), (None, None));
        let p = platform(
            Some("KVMKVMKVM"),
            None,
            &sys("Google", "Google Compute Engine", ""),
            Some("Google"),
        );
        assert_eq!(p.cloud.as_deref(), Some("gce"));
    }

    #[test]
    fn names_pci_devices_from_the_database() {
        let mut devs = vec![
            PciDevice {
                vendor_id: "1af4".into(),
                device_id: "1000".into(),
                class: "020000".into(),
                ..Default::default()
            },
            PciDevice {
                vendor_id: "8086".into(),
                device_id: "7010".into(),
                class: "010180".into(),
                ..Default::default()
            },
        ];
        name_pci(&mut devs, &fixture("pci.ids.txt"));
        assert_eq!(devs[0].vendor_name.as_deref(), Some("Red Hat, Inc."));
        assert_eq!(
            devs[0].device_name.as_deref(),
            Some("Virtio network device")
        );
        assert_eq!(devs[0].class_name.as_deref(), Some("Ethernet controller"));
        assert_eq!(
            devs[1].device_name.as_deref(),
            Some("82371SB PIIX3 IDE [Natoma/Triton II]")
        );
        assert_eq!(devs[1].class_name.as_deref(), Some("IDE interface"));
    }

    #[test]
    fn reads_disks_nics_and_pci_from_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let pci = "sys/devices/pci0000:00/0000:00:04.0";
        put(r, &format!("{pci}/virtio1/block/vda/size"), "2097152\n");
        put(r, &format!("{pci}/virtio1/block/vda/serial"), "SER1\n");
        put(
            r,
            &format!("{pci}/virtio1/block/vda/queue/logical_block_size"),
            "512\n",
        );
        put(
            r,
            &format!("{pci}/virtio1/block/vda/queue/physical_block_size"),
            "4096\n",
        );
        put(
            r,
            &format!("{pci}/virtio1/block/vda/queue/rotational"),
            "0\n",
        );
        put(r, &format!("{pci}/virtio1/block/vda/removable"), "0\n");
        std::fs::create_dir_all(r.join("sys/block")).unwrap();
        std::os::unix::fs::symlink(
            "../devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
            r.join("sys/block/vda"),
        )
        .unwrap();
        put(r, "sys/block/loop0/size", "8\n");
        // A card reader without a card.
        put(r, "sys/block/sdb/size", "0\n");
        put(r, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        put(r, "sys/class/net/eth0/address", "52:54:00:12:34:56\n");
        put(r, "sys/class/net/eth0/type", "1\n");
        put(r, "sys/class/net/eth0/operstate", "up\n");
        put(r, "sys/class/net/eth0/carrier", "1\n");
        put(r, "sys/class/net/eth0/speed", "-1\n");
        std::os::unix::fs::symlink(r.join(pci), r.join("sys/class/net/eth0/device")).unwrap();
        put(r, "sys/bus/pci/drivers/virtio-pci/.keep", "");
        put(r, "sys/bus/pci/.keep", "");
        std::os::unix::fs::symlink(r.join("sys/bus/pci"), r.join(format!("{pci}/subsystem")))
            .unwrap();
        std::os::unix::fs::symlink(
            r.join("sys/bus/pci/drivers/virtio-pci"),
            r.join(format!("{pci}/driver")),
        )
        .unwrap();
        // A bridge: a hardware address but no device.
        put(r, "sys/class/net/br0/address", "52:54:00:aa:bb:cc\n");
        put(r, "sys/class/net/br0/type", "1\n");
        std::fs::create_dir_all(r.join("sys/bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(r.join(pci), r.join("sys/bus/pci/devices/0000:00:04.0"))
            .unwrap();
        for (f, v) in [
            ("vendor", "0x1af4"),
            ("device", "0x1001"),
            ("subsystem_vendor", "0x1af4"),
            ("subsystem_device", "0x0002"),
            ("class", "0x010000"),
            (
                "modalias",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            ),
        ] {
            put(r, &format!("{pci}/{f}"), &format!("{v}\n"));
        }
        let h = host(r, &[]);

        let d = disks(&h);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].size_bytes, 1 << 30);
        assert_eq!(d[0].serial.as_deref(), Some("SER1"));
        assert_eq!((d[0].logical_sector, d[0].physical_sector), (512, 4096));
        assert_eq!(d[0].transport.as_deref(), Some("virtio"));

        let n = nics(&h);
        assert_eq!(n.len(), 1, "{n:?}");
        assert!(n[0].up && n[0].link);
        assert_eq!(n[0].pci_address.as_deref(), Some("0000:00:04.0"));
        assert_eq!(n[0].driver.as_deref(), Some("virtio-pci"));
        assert_eq!(n[0].speed_mbps, None);

        let mut gaps = Gaps::default();
        let hw = hardware(&h, &mut gaps);
        assert_eq!(hw.pci.len(), 1);
        assert_eq!(hw.pci[0].class, "010000");
        assert_eq!(hw.pci[0].vendor_id, "1af4");
        assert_eq!(hw.pci[0].driver.as_deref(), Some("virtio-pci"));
        // No /proc, no DMI, no pci.ids here: each is named, nothing fails.
        let what: Vec<&str> = gaps.0.iter().map(|g| g.what.as_str()).collect();
        assert_eq!(what, ["cpu", "smbios", "pci names"], "{:?}", gaps.0);
    }

    #[test]
    fn transports_from_sysfs_paths() {
        for (p, t) in [
            (
                "../devices/pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1",
                Some("nvme"),
            ),
            (
                "../devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
                Some("sata"),
            ),
            (
                "../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdb",
                Some("usb"),
            ),
            (
                "../devices/pci0000:00/0000:00:05.0/virtio2/block/vda",
                Some("virtio"),
            ),
            (
                "../devices/pci0000:00/0000:00:03.0/0000:02:00.0/host0/port-0:0/end_device-0:0/target0:0:0/0:0:0:0/block/sda",
                Some("sas"),
            ),
            ("../devices/vbd-51712/block/xvda", Some("xen")),
            ("../devices/virtual/block/loop0", None),
        ] {
            assert_eq!(transport(p), t, "{p}");
        }
    }
}
