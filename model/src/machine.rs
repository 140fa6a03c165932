//! Machines a provider makes for a job's target: what is asked for (a spec) and what
//! was made (a record of it, kept in the job's events).

use serde::{Deserialize, Serialize};

/// Checks a MAC (`52:54:00:12:34:56`); its lower-case form.
pub fn parse_mac(text: &str) -> Result<String, String> {
    let mac = text.to_ascii_lowercase();
    let ok = mac.len() == 17
        && mac.split(':').count() == 6
        && mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(mac)
    } else {
        Err(format!(
            "{text:?} is not a MAC: six pairs of hex digits, e.g. 52:54:00:12:34:56"
        ))
    }
}

/// Whether `text` is a port forward `tcp|udp:[IPv4]:PORT-[IPv4]:PORT` and nothing
/// else (it ends up in a provider's command line).
fn is_forward(text: &str) -> bool {
    let end = |part: &str| {
        let Some((addr, port)) = part.rsplit_once(':') else {
            return false;
        };
        let addr_ok = addr.is_empty() || addr.parse::<std::net::Ipv4Addr>().is_ok();
        addr_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
    };
    let Some((proto, rest)) = text.split_once(':') else {
        return false;
    };
    let Some((host, guest)) = rest.split_once('-') else {
        return false;
    };
    matches!(proto, "tcp" | "udp") && end(host) && end(guest)
}

/// The firmware a made machine boots with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineFirmware {
    /// Legacy BIOS.
    #[default]
    Bios,
    /// UEFI, its variables kept with the machine.
    Uefi,
}

/// Where a made machine boots Ferry's ramdisk from, the first time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootFrom {
    /// The network: iPXE from the manager's boot server.
    #[default]
    Pxe,
    /// A CD with the ramdisk and this manager's agent config.
    Iso,
}

/// A blank disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Its size in GiB.
    pub size_gib: u32,
}

/// A network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicSpec {
    /// Its MAC; the manager knows the machine's ramdisk agent by it.
    pub mac: String,
    /// Ports of the provider's host forwarded to the machine, where the provider's
    /// network does that (QEMU's user network: `tcp:127.0.0.1:8080-:80`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwards: Vec<String>,
}

/// A machine to make: `ferry migrate … --to new=FILE` reads one as YAML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSpec {
    /// The provider that makes it (a name under `providers:` in the manager config).
    pub provider: String,
    /// Virtual CPUs.
    #[serde(default = "one")]
    pub cpus: u32,
    /// Memory in MiB (the ramdisk needs about 1 GiB).
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Firmware.
    #[serde(default)]
    pub firmware: MachineFirmware,
    /// Where it first boots the ramdisk from.
    #[serde(default)]
    pub boot: BootFrom,
    /// Its disks, the first one first.
    pub disks: Vec<DiskSpec>,
    /// Its network cards, the first one the one it boots from.
    pub nics: Vec<NicSpec>,
}

fn one() -> u32 {
    1
}

fn default_memory() -> u32 {
    1024
}

impl MachineSpec {
    /// Every problem of the spec, each naming the field and what to give instead.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.provider.is_empty() {
            out.push("provider: name one of the manager config's providers".to_string());
        }
        if !(1..=256).contains(&self.cpus) {
            out.push(format!("cpus: {} is not within 1–256", self.cpus));
        }
        if self.memory_mib < 512 {
            out.push(format!(
                "memory_mib: {} MiB is too little for the ramdisk; give at least 512",
                self.memory_mib
            ));
        }
        if self.disks.is_empty() {
            out.push("disks: give at least one, e.g. `- size_gib: 10`".to_string());
        }
        for (i, d) in self.disks.iter().enumerate() {
            if d.size_gib == 0 {
                out.push(format!("disks[{i}].size_gib: give a size of 1 GiB or more"));
            }
        }
        if self.nics.is_empty() {
            out.push("nics: give at least one, with the MAC the target is known by".to_string());
        }
        let mut seen = Vec::new();
        for (i, n) in self.nics.iter().enumerate() {
            match parse_mac(&n.mac) {
                Ok(mac) if seen.contains(&mac) => {
                    out.push(format!("nics[{i}].mac: {mac} is given twice"))
                }
                Ok(mac) => seen.push(mac),
                Err(e) => out.push(format!("nics[{i}].mac: {e}")),
            }
            for f in &n.forwards {
                if !is_forward(f) {
                    out.push(format!(
                        "nics[{i}].forwards: {f:?} is not a forward like tcp:127.0.0.1:8080-:80 \
                         (tcp or udp, then [IPv4]:port-[IPv4]:port)"
                    ));
                }
            }
        }
        out
    }

    /// The MACs of its NICs, lower case.
    pub fn macs(&self) -> Vec<String> {
        self.nics
            .iter()
            .map(|n| n.mac.to_ascii_lowercase())
            .collect()
    }
}

/// A machine a provider made (or found already made) for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// The provider.
    pub provider: String,
    /// Its name there (the job's id).
    pub name: String,
    /// Its NICs' MACs.
    pub macs: Vec<String>,
    /// Whether this call made it (false: it was there already).
    pub created: bool,
    /// Where its console is written, when the provider keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MachineSpec {
        serde_saphyr::from_str(
            "provider: lab\nfirmware: uefi\ndisks: [{size_gib: 5}]\nnics: [{mac: '52:54:00:AA:00:01'}]\n",
        )
        .expect("spec")
    }

    #[test]
    fn a_small_spec_gets_defaults_and_no_problems() {
        let s = spec();
        assert_eq!((s.cpus, s.memory_mib, s.boot), (1, 1024, BootFrom::Pxe));
        assert_eq!(s.firmware, MachineFirmware::Uefi);
        assert!(s.problems().is_empty(), "{:?}", s.problems());
        assert_eq!(s.macs(), vec!["52:54:00:aa:00:01"]);
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let mut s = spec();
        s.cpus = 0;
        s.memory_mib = 64;
        s.disks.push(DiskSpec { size_gib: 0 });
        s.nics.push(NicSpec {
            mac: "52:54:00:aa:00:01".into(),
            forwards: vec!["8080:80".into()],
        });
        s.nics.push(NicSpec {
            mac: "nope".into(),
            forwards: vec![
                "tcp:1-2,guestfwd=tcp:10.0.2.100:1-cmd:sh".into(),
                "tcp::8080-10.0.2.15:80".into(),
                "udp:0.0.0.0:53-:53".into(),
            ],
        });
        let p = s.problems();
        for field in [
            "cpus:",
            "memory_mib:",
            "disks[1].size_gib",
            "nics[1].mac: 52:54:00:aa:00:01 is given twice",
            "nics[1].forwards",
            "nics[2].mac",
            "nics[2].forwards: \"tcp:1-2,guestfwd",
        ] {
            assert!(p.iter().any(|l| l.starts_with(field)), "{field}: {p:?}");
        }
        // Well-formed forwards are no problem.
        assert_eq!(
            p.iter().filter(|l| l.contains("forwards")).count(),
            2,
            "{p:?}"
        );
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let e = serde_saphyr::from_str::<MachineSpec>(
            "provider: lab\ndisks: []\nnics: []\nram: 4096\n",
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("ram"), "{e}");
    }
}
