//! The migrated system's configuration files, rewritten for the target: fstab by the
//! new UUIDs, host name, RAID arrays, and the network for whichever system the
//! source used (ifupdown, systemd-networkd, netplan, NetworkManager) with interface
//! names pinned to the target's MACs. Pure text in, text out; the caller writes.

use std::fmt::Write as _;

use ferry_model::deploy::{IfaceKind, IfacePlan, NetworkPlan};

use super::storage::Made;

/// A file to write into the migrated system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Absolute path in the migrated system.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Its text.
    pub content: String,
}

impl File {
    fn new(path: impl Into<String>, mode: u32, content: String) -> File {
        File {
            path: path.into(),
            mode,
            content,
        }
    }
}

/// Whether an fstab `spec` names a block device (which the target may not have).
fn is_block_spec(spec: &str) -> bool {
    ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/"]
        .iter()
        .any(|p| spec.starts_with(p))
}

/// The fstab line of a filesystem the plan made.
fn fstab_line(m: &Made) -> String {
    let mount = m.fs.mount.as_deref().unwrap_or("none");
    let options =
        m.fs.options
            .as_deref()
            .unwrap_or(match m.fs.fstype.as_str() {
                "swap" => "sw",
                _ => "defaults",
            });
    let pass = match (mount, m.fs.fstype.as_str()) {
        (_, "swap" | "btrfs") => 0,
        ("/", _) => 1,
        _ => 2,
    };
    format!("UUID={} {mount} {} {options} 0 {pass}", m.uuid, m.fs.fstype)
}

/// The migrated system's fstab from the source's `old` one: each filesystem the plan
/// made, by its new UUID, where the source had that mount point (else appended);
/// the source's lines for block devices the target does not have (an ESP on a BIOS
/// target, old swap) commented out; everything else (tmpfs, binds, network
/// filesystems, comments) kept.
pub fn fstab(old: &str, made: &[Made]) -> String {
    let mut out = String::new();
    let mut placed = vec![false; made.len()];
    for line in old.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 || fields[0].starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let (spec, file, vfstype) = (fields[0], fields[1], fields[2]);
        let planned = made.iter().position(|m| {
            m.fs.mount.as_deref().map(|p| p.trim_end_matches('/'))
                == Some(file.trim_end_matches('/'))
        });
        match planned {
            Some(i) if !placed[i] => {
                out.push_str(&fstab_line(&made[i]));
                out.push('\n');
                placed[i] = true;
            }
            _ if vfstype == "swap" || is_block_spec(spec) => {
                let _ = writeln!(out, "# ferry: not on this machine: {line}");
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mut rest: Vec<&Made> = made
        .iter()
        .zip(&placed)
        .filter(|(_, p)| !**p)
        .map(|(m, _)| m)
        .collect();
    rest.sort_by_key(|m| {
        m.fs.mount
            .as_deref()
            .map_or(usize::MAX, |p| p.matches('/').count())
    });
    for m in rest {
        out.push_str(&fstab_line(m));
        out.push('\n');
    }
    out
}

/// `/etc/hosts` with the source's host name `old_name` replaced by `name` on the
/// 127.0.1.1 line (added when missing).
pub fn hosts(old: &str, old_name: &str, name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let entry = if short == name {
        format!("127.0.1.1\t{name}")
    } else {
        format!("127.0.1.1\t{name} {short}")
    };
    let mut out = String::new();
    let mut found = false;
    for line in old.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            found = true;
            out.push_str(&entry);
        } else if !old_name.is_empty()
            && line.split_whitespace().skip(1).any(|h| h == old_name)
            && !line.starts_with('#')
        {
            // Another address named after the source: renamed.
            let fields: Vec<&str> = line
                .split_whitespace()
                .map(|h| if h == old_name { name } else { h })
                .collect();
            out.push_str(&fields.join("\t"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if !found {
        out.push_str(&entry);
        out.push('\n');
    }
    out
}

/// `/etc/resolv.conf` for the plan's resolvers; `None` when it has none.
pub fn resolv_conf(dns: &ferry_model::survey::Dns) -> Option<String> {
    if dns.nameservers.is_empty() {
        return None;
    }
    let mut text = String::from("# Written by Ferry for this machine.\n");
    for n in &dns.nameservers {
        let _ = writeln!(text, "nameserver {n}");
    }
    if !dns.search.is_empty() {
        let _ = writeln!(text, "search {}", dns.search.join(" "));
    }
    Some(text)
}

/// `mdadm.conf` lines for the arrays, from `mdadm --detail --scan` output, so the
/// initramfs assembles them by UUID.
pub fn mdadm_conf(old: &str, scan: &str) -> String {
    // An ARRAY line goes with the indented lines that continue it.
    let mut out = String::new();
    let mut in_array = false;
    for l in old.lines() {
        if l.starts_with("ARRAY") {
            in_array = true;
        } else if !(in_array && l.starts_with([' ', '\t'])) {
            in_array = false;
            out.push_str(l);
            out.push('\n');
        }
    }
    for l in scan.lines().filter(|l| l.starts_with("ARRAY")) {
        out.push_str(l.trim());
        out.push('\n');
    }
    out
}

/// The udev rule pinning each physical interface's name to its MAC.
pub fn name_rules(net: &NetworkPlan) -> File {
    let mut text =
        String::from("# Written by Ferry: interface names follow the MACs of this machine.\n");
    for i in &net.interfaces {
        if let IfaceKind::Ethernet { mac } = &i.kind {
            let _ = writeln!(
                text,
                "SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{{type}}==\"1\", ATTR{{address}}==\"{}\", NAME=\"{}\"",
                mac.to_ascii_lowercase(),
                i.name
            );
        }
    }
    File::new("/etc/udev/rules.d/70-ferry-net-names.rules", 0o644, text)
}

/// The default gateway of interface `name`, if the plan routes the default through it.
fn gateway_of<'a>(net: &'a NetworkPlan, name: &str, v6: bool) -> Option<&'a str> {
    net.routes
        .iter()
        .filter(|r| r.dst == "default" && r.dev.as_deref() == Some(name))
        .filter_map(|r| r.gateway.as_deref())
        .find(|g| g.contains(':') == v6)
}

/// The routes through `name` other than the default.
fn other_routes<'a>(
    net: &'a NetworkPlan,
    name: &'a str,
) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
    net.routes
        .iter()
        .filter(move |r| r.dst != "default" && r.dev.as_deref() == Some(name))
        .map(|r| (r.dst.as_str(), r.gateway.as_deref()))
}

/// `/etc/network/interfaces` for ifupdown.
pub fn ifupdown(net: &NetworkPlan) -> File {
    let mut t =
        String::from("# Written by Ferry for this machine.\nauto lo\niface lo inet loopback\n");
    for i in &net.interfaces {
        let _ = write!(t, "\nauto {}\n", i.name);
        let v4: Vec<&String> = i.addresses.iter().filter(|a| !a.contains(':')).collect();
        let v6: Vec<&String> = i.addresses.iter().filter(|a| a.contains(':')).collect();
        let mut stanzas = Vec::new();
        if i.dhcp {
            stanzas.push(("inet", "dhcp", None));
        }
        stanzas.extend(v4.iter().map(|a| ("inet", "static", Some(a.as_str()))));
        stanzas.extend(v6.iter().map(|a| ("inet6", "static", Some(a.as_str()))));
        if stanzas.is_empty() {
            stanzas.push(("inet", "manual", None));
        }
        let mut first = [true, true];
        for (family, method, address) in stanzas {
            let _ = writeln!(t, "iface {} {family} {method}", i.name);
            if let Some(a) = address {
                let _ = writeln!(t, "    address {a}");
            }
            let k = usize::from(family == "inet6");
            if first[k] {
                first[k] = false;
                if let Some(g) = gateway_of(net, &i.name, family == "inet6") {
                    let _ = writeln!(t, "    gateway {g}");
                }
                if k == 0 {
                    match &i.kind {
                        IfaceKind::Vlan { link, .. } => {
                            let _ = writeln!(t, "    vlan-raw-device {link}");
                        }
                        IfaceKind::Bond { members, mode } => {
                            let _ = writeln!(t, "    bond-slaves {}", members.join(" "));
                            let _ = writeln!(t, "    bond-mode {mode}");
                            let _ = writeln!(t, "    bond-miimon 100");
                        }
                        IfaceKind::Ethernet { .. } => {}
                    }
                    if let Some(mtu) = i.mtu {
                        let _ = writeln!(t, "    mtu {mtu}");
                    }
                    for (dst, via) in other_routes(net, &i.name) {
                        let via = via.map(|g| format!(" via {g}")).unwrap_or_default();
                        let _ = writeln!(t, "    up ip route add {dst}{via} dev {}", i.name);
                    }
                    if !net.dns.nameservers.is_empty() && !i.dhcp {
                        let _ =
                            writeln!(t, "    dns-nameservers {}", net.dns.nameservers.join(" "));
                        if !net.dns.search.is_empty() {
                            let _ = writeln!(t, "    dns-search {}", net.dns.search.join(" "));
                        }
                    }
                }
            }
        }
    }
    File::new("/etc/network/interfaces", 0o644, t)
}

/// systemd-networkd's `.network` (and `.netdev`) files.
pub fn networkd(net: &NetworkPlan) -> Vec<File> {
    let mut files = Vec::new();
    for i in &net.interfaces {
        let mut t = format!(
            "# Written by Ferry for this machine.\n[Match]\nName={}\n",
            i.name
        );
        if let Some(mtu) = i.mtu {
            let _ = write!(t, "\n[Link]\nMTUBytes={mtu}\n");
        }
        t.push_str("\n[Network]\n");
        if i.dhcp {
            t.push_str("DHCP=yes\n");
        }
        for a in &i.addresses {
            let _ = writeln!(t, "Address={a}");
        }
        for v6 in [false, true] {
            if let Some(g) = gateway_of(net, &i.name, v6) {
                let _ = writeln!(t, "Gateway={g}");
            }
        }
        if !i.dhcp {
            for d in &net.dns.nameservers {
                let _ = writeln!(t, "DNS={d}");
            }
            if !net.dns.search.is_empty() {
                let _ = writeln!(t, "Domains={}", net.dns.search.join(" "));
            }
        }
        for v in net.interfaces.iter() {
            match &v.kind {
                IfaceKind::Vlan { link, .. } if *link == i.name => {
                    let _ = writeln!(t, "VLAN={}", v.name);
                }
                IfaceKind::Bond { members, .. } if members.contains(&i.name) => {
                    let _ = writeln!(t, "Bond={}", v.name);
                }
                _ => {}
            }
        }
        for (dst, via) in other_routes(net, &i.name) {
            let _ = write!(t, "\n[Route]\nDestination={dst}\n");
            if let Some(g) = via {
                let _ = writeln!(t, "Gateway={g}");
            }
        }
        files.push(File::new(
            format!("/etc/systemd/network/50-ferry-{}.network", i.name),
            0o644,
            t,
        ));
        let netdev = match &i.kind {
            IfaceKind::Vlan { id, .. } => Some(format!("Kind=vlan\n\n[VLAN]\nId={id}\n")),
            IfaceKind::Bond { mode, .. } => Some(format!(
                "Kind=bond\n\n[Bond]\nMode={mode}\nMIIMonitorSec=100ms\n"
            )),
            IfaceKind::Ethernet { .. } => None,
        };
        if let Some(kind) = netdev {
            files.push(File::new(
                format!("/etc/systemd/network/50-ferry-{}.netdev", i.name),
                0o644,
                format!(
                    "# Written by Ferry for this machine.\n[NetDev]\nName={}\n{kind}",
                    i.name
                ),
            ));
        }
    }
    files
}

/// A YAML flow list of strings.
fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

/// netplan's configuration (one file, read after the source's, which are set aside).
pub fn netplan(net: &NetworkPlan) -> File {
    let mut sections: [(&str, String); 3] = [
        ("ethernets", String::new()),
        ("vlans", String::new()),
        ("bonds", String::new()),
    ];
    for i in &net.interfaces {
        let mut t = format!("    {}:\n", i.name);
        match &i.kind {
            IfaceKind::Ethernet { mac } => {
                let _ = writeln!(
                    t,
                    "      match:\n        macaddress: \"{}\"",
                    mac.to_ascii_lowercase()
                );
                let _ = writeln!(t, "      set-name: {}", i.name);
            }
            IfaceKind::Vlan { link, id } => {
                let _ = writeln!(t, "      id: {id}\n      link: {link}");
            }
            IfaceKind::Bond { members, mode } => {
                let _ = writeln!(
                    t,
                    "      interfaces: {}\n      parameters:\n        mode: {mode}\n        mii-monitor-interval: 100",
                    yaml_list(members)
                );
            }
        }
        if i.dhcp {
            t.push_str("      dhcp4: true\n");
        }
        if !i.addresses.is_empty() {
            let _ = writeln!(t, "      addresses: {}", yaml_list(&i.addresses));
        }
        if let Some(mtu) = i.mtu {
            let _ = writeln!(t, "      mtu: {mtu}");
        }
        let routes: Vec<String> = [false, true]
            .iter()
            .filter_map(|v6| gateway_of(net, &i.name, *v6))
            // `default` needs netplan 0.103; the prefixes work on every version.
            .map(|g| {
                let to = if g.contains(':') { "::/0" } else { "0.0.0.0/0" };
                format!("        - to: \"{to}\"\n          via: \"{g}\"\n")
            })
            .chain(other_routes(net, &i.name).map(|(dst, via)| {
                let via = via
                    .map(|g| format!("          via: \"{g}\"\n"))
                    .unwrap_or_default();
                format!("        - to: \"{dst}\"\n{via}")
            }))
            .collect();
        if !routes.is_empty() {
            let _ = write!(t, "      routes:\n{}", routes.concat());
        }
        if !i.dhcp && !net.dns.nameservers.is_empty() {
            let _ = writeln!(
                t,
                "      nameservers:\n        addresses: {}\n        search: {}",
                yaml_list(&net.dns.nameservers),
                yaml_list(&net.dns.search)
            );
        }
        let at = match i.kind {
            IfaceKind::Ethernet { .. } => 0,
            IfaceKind::Vlan { .. } => 1,
            IfaceKind::Bond { .. } => 2,
        };
        sections[at].1.push_str(&t);
    }
    let mut text = String::from("# Written by Ferry for this machine.\nnetwork:\n  version: 2\n");
    for (name, body) in sections {
        if !body.is_empty() {
            let _ = write!(text, "  {name}:\n{body}");
        }
    }
    File::new("/etc/netplan/90-ferry.yaml", 0o600, text)
}

/// NetworkManager keyfiles, one connection per interface.
pub fn network_manager(net: &NetworkPlan) -> Vec<File> {
    net.interfaces
        .iter()
        .map(|i: &IfacePlan| {
            let (kind, extra) = match &i.kind {
                IfaceKind::Ethernet { mac } => (
                    "ethernet",
                    format!("\n[ethernet]\nmac-address={}\n", mac.to_ascii_uppercase()),
                ),
                IfaceKind::Vlan { link, id } => {
                    ("vlan", format!("\n[vlan]\nid={id}\nparent={link}\n"))
                }
                IfaceKind::Bond { mode, .. } => {
                    ("bond", format!("\n[bond]\nmode={mode}\nmiimon=100\n"))
                }
            };
            let master = net.interfaces.iter().find_map(|b| match &b.kind {
                IfaceKind::Bond { members, .. } if members.contains(&i.name) => Some(&b.name),
                _ => None,
            });
            let mut t = format!(
                "# Written by Ferry for this machine.\n[connection]\nid=ferry-{name}\ntype={kind}\ninterface-name={name}\nautoconnect=true\n",
                name = i.name
            );
            if let Some(m) = master {
                let _ = writeln!(t, "master={m}\nslave-type=bond");
            }
            t.push_str(&extra);
            if let Some(mtu) = i.mtu {
                let _ = writeln!(t, "mtu={mtu}");
            }
            if master.is_none() {
                for v6 in [false, true] {
                    let addrs: Vec<&String> =
                        i.addresses.iter().filter(|a| a.contains(':') == v6).collect();
                    let _ = write!(t, "\n[ipv{}]\n", if v6 { 6 } else { 4 });
                    let method = match (i.dhcp, addrs.is_empty(), v6) {
                        (_, false, _) => "manual",
                        (true, true, false) => "auto",
                        (_, true, true) => "ignore",
                        (false, true, false) => "disabled",
                    };
                    let _ = writeln!(t, "method={method}");
                    let gw = gateway_of(net, &i.name, v6);
                    for (n, a) in addrs.iter().enumerate() {
                        let with_gw = if n == 0 { gw.map(|g| format!(",{g}")) } else { None };
                        let _ = writeln!(t, "address{}={a}{}", n + 1, with_gw.unwrap_or_default());
                    }
                    let dns: Vec<&String> = net
                        .dns
                        .nameservers
                        .iter()
                        .filter(|d| d.contains(':') == v6)
                        .collect();
                    if !i.dhcp && !dns.is_empty() {
                        let dns: Vec<&str> = dns.iter().map(|d| d.as_str()).collect();
                        let _ = writeln!(t, "dns={};", dns.join(";"));
                        if !net.dns.search.is_empty() {
                            let _ = writeln!(t, "dns-search={};", net.dns.search.join(";"));
                        }
                    }
                    for (n, (dst, via)) in other_routes(net, &i.name)
                        .filter(|(d, _)| d.contains(':') == v6)
                        .enumerate()
                    {
                        let via = via.map(|g| format!(",{g}")).unwrap_or_default();
                        let _ = writeln!(t, "route{}={dst}{via}", n + 1);
                    }
                }
            }
            File::new(
                format!("/etc/NetworkManager/system-connections/ferry-{}.nmconnection", i.name),
                0o600,
                t,
            )
        })
        .collect()
}

/// The files for the network system(s) the source used (`ifupdown`,
/// `systemd-networkd`, `netplan`, `NetworkManager`; ifupdown when none is known),
/// plus the name pinning rule.
pub fn network_files(net: &NetworkPlan, systems: &[String]) -> Vec<File> {
    let mut files = vec![name_rules(net)];
    let before = files.len();
    for s in systems {
        match s.as_str() {
            "ifupdown" => files.push(ifupdown(net)),
            "systemd-networkd" => files.extend(networkd(net)),
            "netplan" => files.push(netplan(net)),
            "NetworkManager" => files.extend(network_manager(net)),
            _ => {}
        }
    }
    if files.len() == before {
        files.push(ifupdown(net));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::deploy::RoutePlan;
    use ferry_model::deploy::examples::{fs, plan};

    fn made(device: &str, fstype: &str, mount: Option<&str>, uuid: &str) -> Made {
        Made {
            fs: fs(device, fstype, mount, None),
            dev: format!("/dev/{device}"),
            uuid: uuid.into(),
        }
    }

    /// Planned mounts by UUID in place; the old ESP and swap commented out; tmpfs
    /// and comments kept; the new /boot/efi appended.
    #[test]
    fn fstab_names_the_new_filesystems_by_uuid() {
        let old = "# /etc/fstab: static file system information.\n\
                   /dev/mapper/sys-root / ext4 errors=remount-ro 0 1\n\
                   UUID=1111 /boot ext4 defaults 0 2\n\
                   UUID=2222 /boot/efi vfat umask=0077 0 1\n\
                   /dev/mapper/sys-swap none swap sw 0 0\n\
                   tmpfs /tmp tmpfs size=1G 0 0\n";
        let mut root = made("sys/root", "xfs", Some("/"), "aaaa");
        root.fs.options = Some("noatime".into());
        let new = fstab(
            old,
            &[
                root,
                made("boot", "ext4", Some("/boot"), "bbbb"),
                made("sys/swap", "swap", None, "cccc"),
                made("data", "ext4", Some("/srv/data"), "dddd"),
            ],
        );
        assert_eq!(
            new,
            "# /etc/fstab: static file system information.\n\
             UUID=aaaa / xfs noatime 0 1\n\
             UUID=bbbb /boot ext4 defaults 0 2\n\
             # ferry: not on this machine: UUID=2222 /boot/efi vfat umask=0077 0 1\n\
             # ferry: not on this machine: /dev/mapper/sys-swap none swap sw 0 0\n\
             tmpfs /tmp tmpfs size=1G 0 0\n\
             UUID=dddd /srv/data ext4 defaults 0 2\n\
             UUID=cccc none swap sw 0 0\n"
        );
    }

    #[test]
    fn resolv_conf_lists_the_resolvers() {
        assert_eq!(
            resolv_conf(&net().dns).as_deref(),
            Some(
                "# Written by Ferry for this machine.\nnameserver 192.0.2.53\nsearch example.net\n"
            )
        );
        assert_eq!(resolv_conf(&Default::default()), None);
    }

    #[test]
    fn hosts_and_mdadm_conf_follow_the_target() {
        let old = "127.0.0.1\tlocalhost\n127.0.1.1\tsrc\n192.0.2.10 src extra\n::1 localhost\n";
        assert_eq!(
            hosts(old, "src", "web1.example.net"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb1.example.net web1\n192.0.2.10\tweb1.example.net\textra\n::1 localhost\n"
        );
        assert_eq!(
            hosts("127.0.0.1 localhost\n", "", "web1"),
            "127.0.0.1 localhost\n127.0.1.1\tweb1\n"
        );
        assert_eq!(
            mdadm_conf(
                "HOMEHOST <system>\nARRAY /dev/md/old metadata=1.2\n   UUID=1:2:3:4\nMAILADDR root\n",
                "ARRAY /dev/md/md0 metadata=1.2 name=any:md0 UUID=5:6:7:8\n"
            ),
            "HOMEHOST <system>\nMAILADDR root\nARRAY /dev/md/md0 metadata=1.2 name=any:md0 UUID=5:6:7:8\n"
        );
    }

    /// The example's `ens3` with a static address, plus a VLAN on it and a route.
    fn net() -> NetworkPlan {
        let mut net = plan().network;
        net.dns.nameservers = vec!["192.0.2.53".into()];
        net.dns.search = vec!["example.net".into()];
        net.interfaces[0].addresses.push("2001:db8::10/64".into());
        net.interfaces.push(IfacePlan {
            name: "ens3.100".into(),
            kind: IfaceKind::Vlan {
                link: "ens3".into(),
                id: 100,
            },
            addresses: vec!["198.51.100.5/24".into()],
            dhcp: false,
            mtu: Some(1400),
        });
        net.routes.push(RoutePlan {
            dst: "203.0.113.0/24".into(),
            gateway: Some("198.51.100.1".into()),
            dev: Some("ens3.100".into()),
        });
        net
    }

    #[test]
    fn ifupdown_gets_one_stanza_per_address_and_the_routes() {
        assert_eq!(
            ifupdown(&net()).content,
            "# Written by Ferry for this machine.\n\
             auto lo\niface lo inet loopback\n\n\
             auto ens3\n\
             iface ens3 inet static\n    address 192.0.2.10/24\n    gateway 192.0.2.1\n\
             \x20   dns-nameservers 192.0.2.53\n    dns-search example.net\n\
             iface ens3 inet6 static\n    address 2001:db8::10/64\n\n\
             auto ens3.100\n\
             iface ens3.100 inet static\n    address 198.51.100.5/24\n    vlan-raw-device ens3\n\
             \x20   mtu 1400\n    up ip route add 203.0.113.0/24 via 198.51.100.1 dev ens3.100\n\
             \x20   dns-nameservers 192.0.2.53\n    dns-search example.net\n"
        );
    }

    #[test]
    fn networkd_gets_network_and_netdev_files() {
        let files = networkd(&net());
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/systemd/network/50-ferry-ens3.network",
                "/etc/systemd/network/50-ferry-ens3.100.network",
                "/etc/systemd/network/50-ferry-ens3.100.netdev",
            ]
        );
        assert_eq!(
            files[0].content,
            "# Written by Ferry for this machine.\n[Match]\nName=ens3\n\n[Network]\n\
             Address=192.0.2.10/24\nAddress=2001:db8::10/64\nGateway=192.0.2.1\n\
             DNS=192.0.2.53\nDomains=example.net\nVLAN=ens3.100\n"
        );
        assert!(
            files[1].content.contains("[Link]\nMTUBytes=1400\n"),
            "{}",
            files[1].content
        );
        assert!(
            files[1]
                .content
                .ends_with("[Route]\nDestination=203.0.113.0/24\nGateway=198.51.100.1\n"),
            "{}",
            files[1].content
        );
        assert!(files[2].content.contains("Kind=vlan\n\n[VLAN]\nId=100\n"));
    }

    /// netplan's file parses as YAML with the interface matched by MAC.
    #[test]
    fn netplan_matches_by_mac_and_parses() {
        let f = netplan(&net());
        assert_eq!(
            (f.path.as_str(), f.mode),
            ("/etc/netplan/90-ferry.yaml", 0o600)
        );
        let v: serde_json::Value = serde_saphyr::from_str(&f.content).expect("yaml");
        let ens3 = &v["network"]["ethernets"]["ens3"];
        assert_eq!(ens3["match"]["macaddress"], "52:54:00:12:34:56");
        assert_eq!(ens3["set-name"], "ens3");
        assert_eq!(ens3["addresses"][1], "2001:db8::10/64");
        assert_eq!(ens3["routes"][0]["to"], "0.0.0.0/0");
        assert_eq!(ens3["routes"][0]["via"], "192.0.2.1");
        assert_eq!(ens3["nameservers"]["search"][0], "example.net");
        let vlan = &v["network"]["vlans"]["ens3.100"];
        assert_eq!(
            (vlan["id"].as_u64(), vlan["link"].as_str()),
            (Some(100), Some("ens3"))
        );
        assert_eq!(vlan["routes"][0]["to"], "203.0.113.0/24");
    }

    #[test]
    fn network_manager_gets_a_keyfile_per_connection() {
        let files = network_manager(&net());
        assert_eq!(files[0].mode, 0o600);
        assert_eq!(
            files[0].content,
            "# Written by Ferry for this machine.\n[connection]\nid=ferry-ens3\ntype=ethernet\n\
             interface-name=ens3\nautoconnect=true\n\n[ethernet]\nmac-address=52:54:00:12:34:56\n\n\
             [ipv4]\nmethod=manual\naddress1=192.0.2.10/24,192.0.2.1\ndns=192.0.2.53;\ndns-search=example.net;\n\n\
             [ipv6]\nmethod=manual\naddress1=2001:db8::10/64\n"
        );
        assert!(files[1].content.contains("[vlan]\nid=100\nparent=ens3\n"));
        assert!(
            files[1]
                .content
                .contains("route1=203.0.113.0/24,198.51.100.1\n")
        );
    }

    /// Each system the source used gets its files; an unknown one means ifupdown;
    /// the MAC rule is always there.
    #[test]
    fn the_sources_network_system_is_configured() {
        let paths = |systems: &[&str]| -> Vec<String> {
            let systems: Vec<String> = systems.iter().map(|s| s.to_string()).collect();
            network_files(&plan().network, &systems)
                .into_iter()
                .map(|f| f.path)
                .collect()
        };
        assert_eq!(
            paths(&["netplan", "systemd-networkd"]),
            [
                "/etc/udev/rules.d/70-ferry-net-names.rules",
                "/etc/netplan/90-ferry.yaml",
                "/etc/systemd/network/50-ferry-ens3.network"
            ]
        );
        assert_eq!(
            paths(&["wicked"]),
            [
                "/etc/udev/rules.d/70-ferry-net-names.rules",
                "/etc/network/interfaces"
            ]
        );
        assert_eq!(
            name_rules(&plan().network).content.lines().nth(1),
            Some(
                "SUBSYSTEM==\"net\", ACTION==\"add\", DRIVERS==\"?*\", ATTR{type}==\"1\", ATTR{address}==\"52:54:00:12:34:56\", NAME=\"ens3\""
            )
        );
    }
}
