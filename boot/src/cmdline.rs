//! The Ferry parameters of the kernel command line:
//!
//! - `ferry.ip=ADDR/PREFIX[,GATEWAY[,DNS[,DNS...]]]` — static addressing, no DHCP
//! - `ferry.iface=MAC` — the NIC to bring up (otherwise the first that gets a lease)
//! - `ferry.config=PATH|http://URL` — the agent config (otherwise the baked-in one)
//! - `ferry.debug` — start a busybox shell on the console as well
//! - `ferry.fallback=SECS` — reboot when the agent has not reached the store this many
//!   seconds after the kernel started (a server's own ramdisk: it reboots back into
//!   the server's system)
//!
//! A ramdisk may also carry parameters in [`EXTRA_PATH`], read after the kernel's (a
//! ramdisk entered without a boot loader has no command line of its own).

use std::net::Ipv4Addr;

/// Where a ramdisk carries parameters besides the kernel command line.
pub const EXTRA_PATH: &str = "/etc/ferry/cmdline";

/// Static IPv4 settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIp {
    /// The address.
    pub address: Ipv4Addr,
    /// Prefix length (0–32).
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
}

/// The `ferry.*` parameters found on a command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FerryArgs {
    /// Static addressing.
    pub ip: Option<StaticIp>,
    /// The NIC's MAC address, lower case.
    pub iface: Option<String>,
    /// Where the agent config is.
    pub config: Option<String>,
    /// Whether to start the debug shell.
    pub debug: bool,
    /// Reboot when the store was not reached this many seconds after boot.
    pub fallback_secs: Option<u32>,
}

/// A parameter that cannot be used, with what would be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel parameter {param}={value:?} is not valid: {why}")]
pub struct ArgError {
    /// The parameter name.
    pub param: String,
    /// Its value.
    pub value: String,
    /// What is wrong and what is expected.
    pub why: String,
}

fn err(param: &str, value: &str, why: &str) -> ArgError {
    ArgError {
        param: param.into(),
        value: value.into(),
        why: why.into(),
    }
}

/// Splits a command line into words, honouring double quotes as the kernel does.
pub fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Parses the `ferry.*` parameters; other parameters are ignored. Every bad Ferry
/// parameter is reported (the good ones are still returned).
pub fn parse(cmdline: &str) -> (FerryArgs, Vec<ArgError>) {
    let mut args = FerryArgs::default();
    let mut errors = Vec::new();
    for word in words(cmdline) {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (word.clone(), None),
        };
        match (key.as_str(), value) {
            ("ferry.debug", None) => args.debug = true,
            ("ferry.debug", Some(v)) => args.debug = !matches!(v.as_str(), "0" | "off" | "no"),
            ("ferry.ip", Some(v)) => match parse_ip(&v) {
                Ok(ip) => args.ip = Some(ip),
                Err(why) => errors.push(err("ferry.ip", &v, &why)),
            },
            ("ferry.iface", Some(v)) => match parse_mac(&v) {
                Some(mac) => args.iface = Some(mac),
                None => errors.push(err(
                    "ferry.iface",
                    &v,
                    "expected a MAC address such as 52:54:00:12:34:56",
                )),
            },
            ("ferry.config", Some(v)) if !v.is_empty() => args.config = Some(v),
            ("ferry.fallback", Some(v)) => match v.parse::<u32>() {
                Ok(secs) if secs > 0 => args.fallback_secs = Some(secs),
                _ => errors.push(err(
                    "ferry.fallback",
                    &v,
                    "expected a number of seconds greater than zero",
                )),
            },
            (k, _) if k.starts_with("ferry.") => errors.push(err(
                k,
                "",
                "unknown or missing value; known: ferry.ip=, ferry.iface=, ferry.config=, ferry.debug, ferry.fallback=",
            )),
            _ => {}
        }
    }
    (args, errors)
}

fn parse_ip(v: &str) -> Result<StaticIp, String> {
    let mut parts = v.split(',');
    let cidr = parts.next().unwrap_or("");
    let (addr, prefix) = cidr.split_once('/').ok_or(
        "expected ADDR/PREFIX[,GATEWAY[,DNS...]], e.g. 192.0.2.10/24,192.0.2.1,192.0.2.53",
    )?;
    let address: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or(format!("prefix {prefix:?} is not 0 to 32"))?;
    let gateway = match parts.next() {
        None | Some("") => None,
        Some(g) => Some(
            g.parse()
                .map_err(|_| format!("gateway {g:?} is not an IPv4 address"))?,
        ),
    };
    let dns = parts
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse()
                .map_err(|_| format!("DNS server {d:?} is not an IPv4 address"))
        })
        .collect::<Result<_, _>>()?;
    Ok(StaticIp {
        address,
        prefix,
        gateway,
        dns,
    })
}

/// Normalises a MAC address (`:` or `-` separated) to lower-case colon form.
pub fn parse_mac(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_parameter() {
        let (a, e) = parse(
            "console=ttyS0 ferry.ip=192.0.2.10/24,192.0.2.1,192.0.2.53 ferry.iface=52-54-00-AB-CD-EF ferry.config=\"http://10.0.2.2:8080/a b.yaml\" ferry.debug quiet",
        );
        assert!(e.is_empty(), "{e:?}");
        let ip = a.ip.unwrap();
        assert_eq!(ip.address, Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(ip.prefix, 24);
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(ip.dns, [Ipv4Addr::new(192, 0, 2, 53)]);
        assert_eq!(a.iface.as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(a.config.as_deref(), Some("http://10.0.2.2:8080/a b.yaml"));
        assert!(a.debug);
        assert_eq!(a.fallback_secs, None);
        let (a, e) = parse("ferry.fallback=600");
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(a.fallback_secs, Some(600));
        let (_, e) = parse("ferry.fallback=0");
        assert!(e[0].to_string().contains("seconds"), "{e:?}");
    }

    #[test]
    fn bad_parameters_are_named_and_the_rest_kept() {
        let (a, e) =
            parse("ferry.ip=10.0.0.1 ferry.iface=zz ferry.bogus=1 ferry.debug=0 ferry.config=/x");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].to_string().contains("ferry.ip") && e[0].to_string().contains("ADDR/PREFIX"));
        assert!(e[1].to_string().contains("MAC"));
        assert!(e[2].to_string().contains("ferry.bogus"));
        assert!(!a.debug);
        assert_eq!(a.config.as_deref(), Some("/x"));
        let (_, e) = parse("ferry.ip=10.0.0.1/33");
        assert!(e[0].why.contains("prefix"));
        let (_, e) = parse("ferry.ip=10.0.0.1/24,gw");
        assert!(e[0].why.contains("gateway"));
    }
}
