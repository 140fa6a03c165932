//! A server's own network, carried into the ramdisk its installed agent makes for it
//! (`/etc/ferry/network.json`): clouds give no DHCP to a machine booted differently,
//! or not the same answer, so the ramdisk brings the server's interfaces up as the
//! server had them — addresses, MTU and routes by MAC, and its name servers.

use std::net::Ipv4Addr;

use ferry_model::survey::Network;
use serde::{Deserialize, Serialize};

use super::net::Configured;
use super::sys;

/// Where the ramdisk finds the network to bring up.
pub const PATH: &str = "/etc/ferry/network.json";

/// The IPv4 network of a server, as its ramdisk brings it up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostNetwork {
    /// Interfaces by MAC.
    pub links: Vec<Link>,
    /// Routes other than those each address implies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<StaticRoute>,
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
}

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Its MAC, lower case.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// Addresses with their prefix length.
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// A route out of one of the links.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRoute {
    /// Destination network (0.0.0.0 with prefix 0 for the default route).
    pub dst: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Next hop, or none for a route on the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The link it leaves by.
    pub mac: String,
}

fn cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.split_once('/').unwrap_or((text, "32"));
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((addr.parse().ok()?, prefix))
}

impl HostNetwork {
    /// The network a survey found, and what of it the ramdisk cannot bring up (IPv6,
    /// addresses on VLANs, bonds and bridges, a local resolver) as sentences.
    pub fn from_survey(net: &Network) -> (Self, Vec<String>) {
        let mut left_out = Vec::new();
        let mut out = HostNetwork::default();
        let mut names = Vec::new();
        for i in &net.interfaces {
            if i.kind == "loopback" || i.addresses.is_empty() {
                continue;
            }
            let v4: Vec<(Ipv4Addr, u8)> = i.addresses.iter().filter_map(|a| cidr(a)).collect();
            let v6 = i.addresses.len() - v4.len();
            if v6 > 0 {
                left_out.push(format!(
                    "{}: {v6} IPv6 address(es) (the ramdisk speaks IPv4)",
                    i.name
                ));
            }
            if v4.is_empty() {
                continue;
            }
            let mac = match (&i.mac, i.kind.as_str(), &i.master) {
                (Some(mac), "ether", None) => mac.to_ascii_lowercase(),
                _ => {
                    left_out.push(format!(
                        "{}: a {} interface; its addresses are not brought up in the ramdisk",
                        i.name, i.kind
                    ));
                    continue;
                }
            };
            names.push((i.name.clone(), mac.clone()));
            out.links.push(Link {
                mac,
                mtu: i.mtu,
                addresses: v4,
            });
        }
        for r in &net.routes {
            // The kernel adds the route to each address's own network.
            if r.protocol.as_deref() == Some("kernel") {
                continue;
            }
            let Some(mac) = r
                .dev
                .as_ref()
                .and_then(|d| names.iter().find(|(n, _)| n == d))
                .map(|(_, m)| m.clone())
            else {
                continue;
            };
            let dst = if r.dst == "default" {
                Some((Ipv4Addr::UNSPECIFIED, 0))
            } else {
                cidr(&r.dst)
            };
            let gateway = r.gateway.as_deref().map(str::parse::<Ipv4Addr>);
            match (dst, gateway) {
                (Some((dst, prefix)), None) => out.routes.push(StaticRoute {
                    dst,
                    prefix,
                    gateway: None,
                    mac,
                }),
                (Some((dst, prefix)), Some(Ok(gw))) => out.routes.push(StaticRoute {
                    dst,
                    prefix,
                    gateway: Some(gw),
                    mac,
                }),
                _ => left_out.push(format!("route {} (not IPv4)", r.dst)),
            }
        }
        for ns in &net.dns.nameservers {
            match ns.parse::<Ipv4Addr>() {
                Ok(ip) if ip.is_loopback() => left_out.push(format!(
                    "name server {ip} is a local resolver the ramdisk does not run"
                )),
                Ok(ip) => out.dns.push(ip),
                Err(_) => left_out.push(format!("name server {ns} (not IPv4)")),
            }
        }
        (out, left_out)
    }

    /// Brings the links up among the NICs present (`(name, mac)`), then the routes,
    /// and writes the resolver. Fails when no link can be configured; a link whose MAC
    /// is not here is named among the warnings.
    pub fn apply(&self, nics: &[(String, String)]) -> Result<(Configured, Vec<String>), String> {
        let mut warnings = Vec::new();
        let mut first: Option<Configured> = None;
        for link in &self.links {
            let Some((name, _)) = nics.iter().find(|(_, m)| *m == link.mac) else {
                warnings.push(format!("no interface has MAC {} here", link.mac));
                continue;
            };
            let set = || -> std::io::Result<()> {
                if link.mtu > 0 {
                    sys::set_mtu(name, link.mtu)?;
                }
                for (i, (addr, prefix)) in link.addresses.iter().enumerate() {
                    if i == 0 {
                        sys::set_address(name, *addr, *prefix)?;
                    } else {
                        // The ioctl interface holds one address per label.
                        sys::set_address(&format!("{name}:{i}"), *addr, *prefix)?;
                    }
                }
                sys::link_up(name)
            };
            if let Err(e) = set() {
                warnings.push(format!("{name}: {e}"));
                continue;
            }
            if first.is_none() {
                let (address, prefix) = link.addresses[0];
                first = Some(Configured {
                    iface: name.clone(),
                    method: "server",
                    address,
                    prefix,
                    gateway: None,
                });
            }
        }
        let Some(mut configured) = first else {
            return Err(format!(
                "none of the server's interfaces came up ({})",
                warnings.join("; ")
            ));
        };
        for r in &self.routes {
            let Some((name, _)) = nics.iter().find(|(_, m)| *m == r.mac) else {
                continue;
            };
            if let Err(e) = sys::add_route(name, r.dst, r.prefix, r.gateway) {
                warnings.push(e.to_string());
            } else if r.prefix == 0 && configured.gateway.is_none() {
                configured.gateway = r.gateway;
            }
        }
        super::net::write_resolv(&self.dns);
        Ok((configured, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::survey::{Dns, Interface, Route};

    #[test]
    fn a_cloud_servers_network_is_carried_and_the_rest_named() {
        let iface = |name: &str, kind: &str, mac: &str, addrs: &[&str]| Interface {
            name: name.into(),
            kind: kind.into(),
            mac: Some(mac.into()),
            mtu: 1460,
            state: "UP".into(),
            addresses: addrs.iter().map(|a| a.to_string()).collect(),
            ..Interface::default()
        };
        let route = |dst: &str, gw: Option<&str>, dev: &str, proto: &str| Route {
            dst: dst.into(),
            gateway: gw.map(Into::into),
            dev: Some(dev.into()),
            protocol: Some(proto.into()),
            ..Route::default()
        };
        let net = Network {
            interfaces: vec![
                iface("lo", "loopback", "00:00:00:00:00:00", &["127.0.0.1/8"]),
                iface(
                    "ens4",
                    "ether",
                    "42:01:0A:80:00:02",
                    &["10.128.0.2/32", "10.128.0.9/32", "fe80::1/64"],
                ),
                iface("eth1.100", "vlan", "42:01:0a:80:00:03", &["192.0.2.20/24"]),
            ],
            routes: vec![
                route("default", Some("10.128.0.1"), "ens4", "dhcp"),
                // A /32 address needs an on-link route to its gateway (GCE does this).
                route("10.128.0.1", None, "ens4", "dhcp"),
                route("10.128.0.2", None, "ens4", "kernel"),
                route("192.0.2.0/24", None, "eth1.100", "kernel"),
            ],
            dns: Dns {
                nameservers: vec!["169.254.169.254".into(), "127.0.0.53".into()],
                search: vec![],
            },
            managed_by: vec![],
        };
        let (host, left_out) = HostNetwork::from_survey(&net);
        assert_eq!(
            host.links,
            [Link {
                mac: "42:01:0a:80:00:02".into(),
                mtu: 1460,
                addresses: vec![
                    (Ipv4Addr::new(10, 128, 0, 2), 32),
                    (Ipv4Addr::new(10, 128, 0, 9), 32)
                ],
            }]
        );
        assert_eq!(
            host.routes,
            [
                StaticRoute {
                    dst: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Some(Ipv4Addr::new(10, 128, 0, 1)),
                    mac: "42:01:0a:80:00:02".into(),
                },
                StaticRoute {
                    dst: Ipv4Addr::new(10, 128, 0, 1),
                    prefix: 32,
                    gateway: None,
                    mac: "42:01:0a:80:00:02".into(),
                },
            ]
        );
        assert_eq!(host.dns, [Ipv4Addr::new(169, 254, 169, 254)]);
        let said = left_out.join("\n");
        assert!(said.contains("ens4: 1 IPv6"), "{said}");
        assert!(said.contains("eth1.100: a vlan interface"), "{said}");
        assert!(said.contains("127.0.0.53 is a local resolver"), "{said}");
        let json = serde_json::to_string(&host).unwrap();
        assert_eq!(serde_json::from_str::<HostNetwork>(&json).unwrap(), host);
    }

    #[test]
    fn no_matching_interface_is_an_error_that_names_the_macs() {
        let host = HostNetwork {
            links: vec![Link {
                mac: "52:54:00:00:00:01".into(),
                mtu: 1500,
                addresses: vec![(Ipv4Addr::new(192, 0, 2, 10), 24)],
            }],
            ..HostNetwork::default()
        };
        let err = host
            .apply(&[("eth0".into(), "52:54:00:00:00:99".into())])
            .unwrap_err();
        assert!(
            err.contains("no interface has MAC 52:54:00:00:00:01"),
            "{err}"
        );
    }
}
