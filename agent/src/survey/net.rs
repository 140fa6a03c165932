//! Network configuration: interfaces with addresses, VLANs, bonds and bridges
//! (`ip -j -d addr`), routes (`ip -j route`), DNS (resolv.conf), and which system
//! configures the interfaces, with its files.

use ferry_model::survey::{Dns, Interface, NetConfigSystem, Network, Route};
use serde_json::Value;

use super::{Gaps, Host};

/// Interfaces, routes, resolver and configuring systems of `host`.
pub fn network(host: &Host, gaps: &mut Gaps) -> Network {
    let mut n = Network::default();
    match host.tool("ip", &["-j", "-d", "addr", "show"]) {
        Ok(text) => match interfaces(&text) {
            Ok(i) => n.interfaces = i,
            Err(e) => gaps.note("interfaces", e),
        },
        Err(e) => gaps.note("interfaces", e),
    }
    for family in [
        &["-j", "route", "show", "table", "main"][..],
        &["-j", "-6", "route", "show", "table", "main"],
    ] {
        match host.tool("ip", family).map(|t| routes(&t)) {
            Ok(Ok(r)) => n.routes.extend(r),
            Ok(Err(e)) | Err(e) => gaps.note("routes", e),
        }
    }
    match host.read_raw("/etc/resolv.conf") {
        Ok(text) => n.dns = resolv_conf(&text),
        Err(e) => gaps.note("dns", format!("/etc/resolv.conf: {e}")),
    }
    n.managed_by = config_systems(host);
    n
}

fn parse_json(text: &str, what: &str) -> Result<Vec<Value>, String> {
    serde_json::from_str::<Vec<Value>>(text)
        .map_err(|e| format!("ip: its JSON {what} do not parse: {e}"))
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// Interfaces from `ip -j -d addr show`.
pub fn interfaces(text: &str) -> Result<Vec<Interface>, String> {
    Ok(parse_json(text, "interfaces")?
        .iter()
        .map(|l| {
            let info = &l["linkinfo"];
            let kind = string(&info["info_kind"])
                .or_else(|| string(&l["link_type"]))
                .unwrap_or_default();
            Interface {
                name: string(&l["ifname"]).unwrap_or_default(),
                mac: string(&l["address"]).filter(|_| l["link_type"] != "loopback"),
                permanent_mac: string(&l["permaddr"])
                    .or_else(|| string(&info["info_slave_data"]["perm_hwaddr"]))
                    .filter(|p| l["address"].as_str() != Some(p)),
                mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
                state: string(&l["operstate"]).unwrap_or_default(),
                addresses: l["addr_info"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["scope"] != "link" && a["scope"] != "host")
                    .filter_map(|a| {
                        Some(format!(
                            "{}/{}",
                            a["local"].as_str()?,
                            a["prefixlen"].as_u64()?
                        ))
                    })
                    .collect(),
                vlan_id: (kind == "vlan")
                    .then(|| info["info_data"]["id"].as_u64().map(|v| v as u16))
                    .flatten(),
                link: string(&l["link"]),
                master: string(&l["master"]),
                bond_mode: (kind == "bond")
                    .then(|| string(&info["info_data"]["mode"]))
                    .flatten(),
                kind,
            }
        })
        .collect())
}

/// Routes from `ip -j route show`.
pub fn routes(text: &str) -> Result<Vec<Route>, String> {
    Ok(parse_json(text, "routes")?
        .iter()
        .filter(|r| !string(&r["dst"]).unwrap_or_default().starts_with("fe80:"))
        .map(|r| Route {
            dst: string(&r["dst"]).unwrap_or_default(),
            gateway: string(&r["gateway"]),
            dev: string(&r["dev"]),
            metric: r["metric"].as_u64().map(|m| m as u32),
            protocol: string(&r["protocol"]),
        })
        .collect())
}

/// Name servers and search domains from resolv.conf.
pub fn resolv_conf(text: &str) -> Dns {
    let mut d = Dns::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => d.nameservers.extend(f.next().map(str::to_string)),
            Some("search") | Some("domain") => d.search = f.map(str::to_string).collect(),
            _ => {}
        }
    }
    d
}

/// Whether a systemd unit is enabled (a link in some `*.wants` folder).
pub fn unit_enabled(host: &Host, unit: &str) -> bool {
    [
        "/etc/systemd/system",
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
    ]
    .iter()
    .flat_map(|base| {
        host.list(base)
            .into_iter()
            .map(move |d| format!("{base}/{d}"))
    })
    .filter(|d| d.ends_with(".wants"))
    .any(|d| host.exists(&format!("{d}/{unit}")))
}

/// Files in a folder that end with one of `suffixes`, as absolute paths.
fn files_in(host: &Host, dir: &str, suffixes: &[&str]) -> Vec<String> {
    host.list(dir)
        .into_iter()
        .filter(|f| suffixes.is_empty() || suffixes.iter().any(|s| f.ends_with(s)))
        .map(|f| format!("{dir}/{f}"))
        .collect()
}

/// The systems configuring interfaces here, with the files they read.
pub fn config_systems(host: &Host) -> Vec<NetConfigSystem> {
    let mut out = Vec::new();
    let mut add = |system: &str, files: Vec<String>, enabled: bool| {
        if !files.is_empty() {
            out.push(NetConfigSystem {
                system: system.into(),
                files,
                enabled,
            });
        }
    };
    let mut ifupdown = Vec::new();
    if host.exists("/etc/network/interfaces") {
        ifupdown.push("/etc/network/interfaces".to_string());
    }
    ifupdown.extend(files_in(host, "/etc/network/interfaces.d", &[]));
    let ifup = unit_enabled(host, "networking.service") || host.exists("/etc/init.d/networking");
    add("ifupdown", ifupdown, ifup);
    add(
        "netplan",
        files_in(host, "/etc/netplan", &[".yaml", ".yml"]),
        true,
    );
    let mut networkd = files_in(
        host,
        "/etc/systemd/network",
        &[".network", ".netdev", ".link"],
    );
    networkd.extend(files_in(
        host,
        "/run/systemd/network",
        &[".network", ".netdev"],
    ));
    add(
        "systemd-networkd",
        networkd,
        unit_enabled(host, "systemd-networkd.service"),
    );
    add(
        "NetworkManager",
        files_in(host, "/etc/NetworkManager/system-connections", &[]),
        unit_enabled(host, "NetworkManager.service"),
    );
    // Red Hat's and SUSE's `ifcfg-*` files.
    for (system, dir, unit) in [
        (
            "network-scripts",
            "/etc/sysconfig/network-scripts",
            "network.service",
        ),
        ("wicked", "/etc/sysconfig/network", "wicked.service"),
    ] {
        let ifcfg = files_in(host, dir, &[])
            .into_iter()
            .filter(|f| f.contains("/ifcfg-") && !f.ends_with("ifcfg-lo"))
            .collect();
        add(system, ifcfg, unit_enabled(host, unit));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::{fixture, host, put};

    #[test]
    fn interfaces_bridges_and_routes_from_ip_json() {
        let i = interfaces(&fixture("ip-addr.json")).unwrap();
        let get = |n: &str| i.iter().find(|x| x.name == n).unwrap();
        assert_eq!(get("veth0").addresses, ["192.0.2.10/24", "2001:db8::10/64"]);
        assert_eq!(get("veth0").mac.as_deref(), Some("52:54:00:00:00:10"));
        assert_eq!(get("veth0").kind, "veth");
        assert_eq!(get("veth1").master.as_deref(), Some("br0"));
        assert_eq!(get("br0").kind, "bridge");
        assert_eq!(get("br0").addresses, ["203.0.113.5/24"]);
        assert_eq!(get("lo").mac, None);
        let mut r = routes(&fixture("ip-route.json")).unwrap();
        r.extend(routes(&fixture("ip-route6.json")).unwrap());
        assert_eq!(r[0].dst, "default");
        assert_eq!(r[0].gateway.as_deref(), Some("192.0.2.1"));
        assert_eq!(r[0].metric, Some(100));
        assert!(
            r.iter()
                .any(|x| x.dst == "10.9.0.0/16" && x.protocol.as_deref() == Some("static"))
        );
        assert!(
            r.iter()
                .any(|x| x.dst == "2001:db8:1::/48" && x.gateway.as_deref() == Some("2001:db8::1"))
        );
        assert!(r.iter().all(|x| !x.dst.starts_with("fe80:")));
        assert!(interfaces("garbage").unwrap_err().contains("do not parse"));
    }

    #[test]
    fn bonds_and_vlans_on_bonds() {
        let i = interfaces(&fixture("ip-addr-bond-vlan.json")).unwrap();
        let by = |n: &str| i.iter().find(|x| x.name == n).unwrap();
        let bond = by("bond0");
        assert_eq!(
            (bond.kind.as_str(), bond.bond_mode.as_deref()),
            ("bond", Some("active-backup"))
        );
        // fec0::/64 is the SLAAC prefix QEMU's user network announced.
        assert_eq!(
            bond.addresses,
            ["198.51.100.7/24", "fec0::5054:ff:fe12:3401/64"]
        );
        for member in ["eth0", "eth1"] {
            assert_eq!(by(member).master.as_deref(), Some("bond0"));
        }
        // The backup member wears the bond's address; its own is kept.
        assert_eq!(by("eth1").mac.as_deref(), Some("52:54:00:12:34:01"));
        assert_eq!(
            by("eth1").permanent_mac.as_deref(),
            Some("52:54:00:12:34:02")
        );
        assert_eq!(by("eth0").permanent_mac, None);
        let vlan = by("bond0.42");
        assert_eq!(
            (vlan.kind.as_str(), vlan.vlan_id, vlan.link.as_deref()),
            ("vlan", Some(42), Some("bond0"))
        );
        assert_eq!(vlan.addresses, ["192.0.2.42/24"]);
    }

    #[test]
    fn resolver_and_configuring_systems() {
        let d = resolv_conf(
            "# generated\nnameserver 192.0.2.53\nnameserver 2001:db8::53\nsearch example.com corp.example.com\n",
        );
        assert_eq!(d.nameservers, ["192.0.2.53", "2001:db8::53"]);
        assert_eq!(d.search, ["example.com", "corp.example.com"]);

        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(
            r,
            "etc/network/interfaces",
            "auto lo\niface lo inet loopback\n",
        );
        put(r, "etc/network/interfaces.d/eth0", "auto eth0\n");
        put(
            r,
            "etc/systemd/network/10-eth1.network",
            "[Match]\nName=eth1\n",
        );
        put(
            r,
            "etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
            "",
        );
        put(r, "etc/netplan/.keep", "");
        let s = config_systems(&host(r, &[]));
        let got: Vec<(&str, usize, bool)> = s
            .iter()
            .map(|x| (x.system.as_str(), x.files.len(), x.enabled))
            .collect();
        assert_eq!(got, [("ifupdown", 2, false), ("systemd-networkd", 1, true)]);
        // Without `ip`, interfaces and routes are named as gaps; DNS still read.
        put(r, "etc/resolv.conf", "nameserver 10.0.2.3\n");
        let mut gaps = Gaps::default();
        let n = network(&host(r, &[]), &mut gaps);
        assert_eq!(n.dns.nameservers, ["10.0.2.3"]);
        let what: Vec<&str> = gaps.0.iter().map(|g| g.what.as_str()).collect();
        assert_eq!(what, ["interfaces", "routes", "routes"]);
        assert!(gaps.0[0].why.contains("not installed"), "{:?}", gaps.0);
    }
}
