//! Networking in the ramdisk: static settings from `ferry.ip`, or DHCP on the NIC named
//! by `ferry.iface` or on each NIC in turn.

use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferry_boot::cmdline::FerryArgs;

use super::{dhcp, say, sys};

/// A configured interface.
#[derive(Debug, Clone)]
pub struct Configured {
    /// Kernel name.
    pub iface: String,
    /// `dhcp`, `static`, or `server` (the server's own network, carried in).
    pub method: &'static str,
    /// Address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
}

impl std::fmt::Display for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}/{}",
            self.method, self.iface, self.address, self.prefix
        )?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        Ok(())
    }
}

/// (name, mac) of each NIC with a hardware address, sorted by name.
pub fn nics() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mac = fs::read_to_string(e.path().join("address"))
                .ok()?
                .trim()
                .to_string();
            let is_ether = fs::read_to_string(e.path().join("type")).ok()?.trim() == "1";
            (name != "lo" && is_ether && mac != "00:00:00:00:00:00").then_some((name, mac))
        })
        .collect();
    out.sort();
    out
}

/// Waits up to `wait` for a NIC (the one with MAC `wanted`, if given): drivers may
/// still be probing.
pub fn wait_for_nics(wait: Duration, wanted: Option<&str>) -> Vec<(String, String)> {
    let deadline = Instant::now() + wait;
    loop {
        let found = nics();
        let ready = match wanted {
            Some(mac) => found.iter().any(|(_, m)| m == mac),
            None => !found.is_empty(),
        };
        if ready || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes the resolver configuration (nothing when there are no name servers).
pub(super) fn write_resolv(dns: &[Ipv4Addr]) {
    if dns.is_empty() {
        return;
    }
    let text: String = dns.iter().map(|d| format!("nameserver {d}\n")).collect();
    if let Err(e) = fs::write("/etc/resolv.conf", text) {
        say(&format!("cannot write /etc/resolv.conf: {e}"));
    }
}

fn apply(
    iface: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> std::io::Result<()> {
    sys::set_address(iface, addr, prefix)?;
    sys::link_up(iface)?;
    if let Some(gw) = gateway {
        sys::add_default_route(iface, gw)?;
    }
    Ok(())
}

/// Brings networking up: the server's own network when its installed agent made this
/// ramdisk ([`super::hostnet::PATH`]), else as the command line says; `Err` explains
/// why nothing works.
pub fn bring_up(args: &FerryArgs) -> Result<Configured, String> {
    let _ = sys::link_up("lo").and_then(|_| sys::set_address("lo", Ipv4Addr::LOCALHOST, 8));
    if let Ok(text) = fs::read(super::hostnet::PATH) {
        let host: super::hostnet::HostNetwork =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", super::hostnet::PATH))?;
        let wanted = host.links.first().map(|l| l.mac.as_str());
        let all = wait_for_nics(Duration::from_secs(20), wanted);
        let (configured, warnings) = host.apply(&all)?;
        for w in warnings {
            say(&format!("network: {w}"));
        }
        return Ok(configured);
    }
    let all = wait_for_nics(Duration::from_secs(20), args.iface.as_deref());
    if let Some((name, mac)) = all.first() {
        say(&format!(
            "NIC {name} {mac} ready (uptime {:.1} s)",
            super::uptime_ms() as f64 / 1000.0
        ));
    }
    if all.is_empty() {
        return Err(
            "no network interface appeared; the NIC's driver may be missing from this ramdisk"
                .into(),
        );
    }
    let chosen: Vec<(String, String)> = match &args.iface {
        Some(mac) => {
            let found: Vec<_> = all.iter().filter(|(_, m)| m == mac).cloned().collect();
            if found.is_empty() {
                let have: Vec<String> = all.iter().map(|(n, m)| format!("{n} {m}")).collect();
                return Err(format!(
                    "ferry.iface={mac} names no interface here (have: {})",
                    have.join(", ")
                ));
            }
            found
        }
        None => all,
    };
    for (name, _) in &chosen {
        if let Err(e) = sys::link_up(name) {
            say(&format!("cannot bring {name} up: {e}"));
        }
    }
    // A frame sent before the link has carrier is lost; DHCP would then sit out a
    // whole retry interval.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline
        && !chosen.iter().any(|(name, _)| {
            fs::read_to_string(format!("/sys/class/net/{name}/carrier"))
                .is_ok_and(|c| c.trim() == "1")
        })
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(ip) = &args.ip {
        let (name, _) = &chosen[0];
        apply(name, ip.address, ip.prefix, ip.gateway).map_err(|e| e.to_string())?;
        write_resolv(&ip.dns);
        return Ok(Configured {
            iface: name.clone(),
            method: "static",
            address: ip.address,
            prefix: ip.prefix,
            gateway: ip.gateway,
        });
    }
    let mut errors = Vec::new();
    for (name, mac) in &chosen {
        // Links need a moment after coming up before frames flow.
        match dhcp::obtain(name, mac, Duration::from_secs(12)) {
            Ok(lease) => {
                apply(name, lease.address, lease.prefix, lease.gateway)
                    .map_err(|e| e.to_string())?;
                write_resolv(&lease.dns);
                return Ok(Configured {
                    iface: name.clone(),
                    method: "dhcp",
                    address: lease.address,
                    prefix: lease.prefix,
                    gateway: lease.gateway,
                });
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "no interface got an address by DHCP ({}); for a network without DHCP pass ferry.ip=ADDR/PREFIX,GATEWAY,DNS",
        errors.join("; ")
    ))
}
