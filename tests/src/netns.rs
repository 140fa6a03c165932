//! Hosts as network namespaces on one bridge, with corporate firewalls for real:
//! nftables in a namespace that drops every inbound connection (or all but a few
//! ports), while connections out and their replies pass.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// Inbound connections dropped; outbound and their replies allowed.
pub const OUTBOUND_ONLY: &str = "table inet ferry_fw {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname \"lo\" accept
  }
}
";

/// [`OUTBOUND_ONLY`], but for new TCP connections to `ports` (a boot server, say).
pub fn outbound_only_but(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    OUTBOUND_ONLY.replace(
        "    iifname \"lo\" accept\n",
        &format!(
            "    iifname \"lo\" accept\n    tcp dport {{ {} }} accept\n",
            ports.join(", ")
        ),
    )
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `program` run inside network namespace `netns` if given, else here.
pub fn command(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `program` run inside namespace `ns`.
pub fn in_ns(ns: &str, program: &Path) -> Command {
    command(Some(ns), program)
}

/// Whether `ip` and `nft` are here (else the suites that need them skip).
pub fn tools_missing() -> Option<&'static str> {
    ["/usr/sbin/ip", "/usr/sbin/nft"]
        .into_iter()
        .find(|t| !Path::new(t).exists())
}

/// Namespaces on one bridge, removed on drop. The first holds the bridge at
/// `10.231.<subnet>.1`; host `i` is `.i+1`.
pub struct Net {
    names: Vec<String>,
    subnet: u8,
}

impl Net {
    /// One namespace per name in `hosts` (`tag` and this process's id make them
    /// unique), all on one bridge in `10.231.<subnet>.0/24`.
    pub fn create(tag: &str, subnet: u8, hosts: &[&str]) -> Result<Net> {
        let pid = std::process::id() % 100_000;
        let net = Net {
            names: hosts.iter().map(|h| format!("f{tag}{h}{pid}")).collect(),
            subnet,
        };
        for ns in &net.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let hub = &net.names[0];
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            hub,
            "addr",
            "add",
            &format!("{}/24", net.addr(0)),
            "dev",
            "br0",
        ])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        for (i, ns) in net.names.iter().enumerate().skip(1) {
            let port = format!("p{i}");
            ip(&[
                "link", "add", &port, "netns", hub, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ])?;
            ip(&["-n", hub, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.231.{}.{}", self.subnet, i + 1)
    }

    /// Replaces host `i`'s nftables rules with `rules` (`flush ruleset` lifts them).
    pub fn firewall(&self, i: usize, rules: &str) -> Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.names[i], "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("running nft")?;
        child
            .stdin
            .take()
            .context("nft's stdin")?
            .write_all(format!("flush ruleset\n{rules}").as_bytes())?;
        ensure!(child.wait()?.success(), "nft rules in {}", self.names[i]);
        Ok(())
    }

    /// Can host `from` open a TCP connection to `addr:port`? (bash's /dev/tcp, 3 s.)
    pub fn connects(&self, from: usize, addr: &str, port: u16) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.names[from],
                "timeout",
                "3",
                "bash",
                "-c",
            ])
            .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
