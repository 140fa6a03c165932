//! The `ferry` subcommands, one function each.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_mailbox::time::now_ms;
use ferry_model::protocol::{Action, MessageBody, Refusal};

use crate::config::{InitOptions, ManagerConfig};
use crate::fleet::{AgentView, Fleet};

/// Opens the fleet a manager config names.
pub fn fleet(config: &ManagerConfig) -> Result<Fleet> {
    let store = ferry_mailbox::store::open(&config.store)?;
    Ok(Fleet::new(store, config.keys()?))
}

/// `ferry init`.
pub fn init(opts: &InitOptions) -> Result<()> {
    let path = crate::config::init(opts)?;
    let config = ManagerConfig::load(&path)?;
    println!("created {}", path.display());
    println!("manager key: {}", config.keys()?.sign_public());
    println!("store: {}", config.store.url);
    println!("next: `ferry serve --config {}`", path.display());
    Ok(())
}

/// `ferry agent-config`.
pub fn agent_config(config: &ManagerConfig, out: Option<&Path>, state_dir: PathBuf) -> Result<()> {
    let yaml = config.agent_config(state_dir)?.to_yaml()?;
    match out {
        Some(p) => ferry_mailbox::store::folder::write_atomic(p, yaml.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", p.display()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let d = now_ms().saturating_sub(t);
            if d < 1_000 {
                format!("{d}ms ago")
            } else if d < 120_000 {
                format!("{}s ago", d / 1000)
            } else {
                format!("{}m ago", d / 60_000)
            }
        }
    }
}

/// Renders the fleet as a table.
pub fn table(views: &[AgentView]) -> String {
    let mut out = format!(
        "{:<14} {:<9} {:<8} {:<20} {:<12} {:<8}\n",
        "AGENT", "KIND", "HEALTH", "HOST", "HEARTBEAT", "CMD SEQ"
    );
    for v in views {
        let kind = v
            .identity
            .as_ref()
            .map(|i| i.kind.to_string())
            .unwrap_or("?".into());
        let host = v
            .identity
            .as_ref()
            .map(|i| i.hostname.clone())
            .unwrap_or_default();
        let seq = v
            .status
            .as_ref()
            .map(|s| s.last_command_seq.to_string())
            .unwrap_or("-".into());
        out.push_str(&format!(
            "{:<14} {:<9} {:<8} {:<20} {:<12} {:<8}{}\n",
            &v.id[..12.min(v.id.len())],
            kind,
            v.health.to_string(),
            host,
            ago(v.heartbeat.as_ref().map(|h| h.at_ms)),
            seq,
            if v.problems.is_empty() {
                String::new()
            } else {
                format!("  ! {}", v.problems.join("; "))
            }
        ));
    }
    out
}

/// `ferry agents`.
pub async fn agents(config: &ManagerConfig, json: bool) -> Result<()> {
    let views = fleet(config)?.scan().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print!("{}", table(&views));
    }
    Ok(())
}

/// `ferry agent show`.
pub async fn agent_show(config: &ManagerConfig, id: &str, json: bool) -> Result<()> {
    let fleet = fleet(config)?;
    let id = fleet.resolve(id).await?;
    let view = fleet.view(&id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!("agent     {}", view.id);
    println!("health    {}", view.health);
    if let Some(i) = &view.identity {
        println!("kind      {}", i.kind);
        println!("host      {}", i.hostname);
        println!("version   {}", i.agent_version);
        println!("macs      {}", i.fingerprint.macs.join(", "));
    }
    if let Some(h) = &view.heartbeat {
        println!(
            "heartbeat {} (every {} s, #{})",
            ago(Some(h.at_ms)),
            h.interval_ms / 1000,
            h.seq
        );
    }
    if let Some(s) = &view.status {
        println!("phase     {}", s.phase);
        println!("cmd seq   {}", s.last_command_seq);
        println!("{}", s.survey.render());
        if let Some(e) = &s.last_error {
            println!("error     [{}] {} ({})", e.code, e.text, ago(Some(e.at_ms)));
        }
    }
    for p in &view.problems {
        println!("problem   {p}");
    }
    Ok(())
}

/// Round-trip latencies of `ferry ping`, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct PingReport {
    /// One entry per answered ping.
    pub latencies_ms: Vec<f64>,
}

impl PingReport {
    /// The q-quantile (0..=1) of the latencies.
    pub fn quantile(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() - 1) as f64 * q).round() as usize]
    }
}

/// Pings an agent `count` times through its mailbox; a ping refused as reordered (another
/// manager's command got in first) is re-sent with a new seq.
pub async fn ping_agent(
    fleet: &Fleet,
    id: &str,
    count: u32,
    timeout: Duration,
    mut each: impl FnMut(u32, f64),
) -> Result<PingReport> {
    let mut report = PingReport::default();
    let poll = Duration::from_millis(50);
    for n in 1..=count {
        let mut tries = 0;
        loop {
            tries += 1;
            let start = Instant::now();
            let cmd = fleet
                .send(id, Action::Ping { sent_ms: now_ms() }, BTreeMap::new())
                .await?;
            let reply = fleet
                .await_reply(id, &cmd.command_id, timeout, poll)
                .await?;
            match reply.body {
                MessageBody::Pong { .. } => {
                    let ms = start.elapsed().as_secs_f64() * 1000.0;
                    report.latencies_ms.push(ms);
                    each(n, ms);
                    break;
                }
                MessageBody::Refused {
                    reason: Refusal::Reordered,
                    ..
                } if tries < 5 => continue,
                other => anyhow::bail!("agent {id} answered ping {n} with {other:?}"),
            }
        }
    }
    Ok(report)
}

/// `ferry ping`.
pub async fn ping(config: &ManagerConfig, id: &str, count: u32, timeout: Duration) -> Result<()> {
    let fleet = fleet(config)?;
    let id = fleet.resolve(id).await?;
    let report = ping_agent(&fleet, &id, count, timeout, |n, ms| {
        println!("reply from {}: seq={n} time={ms:.1} ms", &id[..12]);
        let _ = std::io::stdout().flush();
    })
    .await?;
    let v = &report.latencies_ms;
    println!(
        "{} pings answered; min {:.1} / p50 {:.1} / p99 {:.1} / max {:.1} ms",
        v.len(),
        report.quantile(0.0),
        report.quantile(0.5),
        report.quantile(0.99),
        report.quantile(1.0)
    );
    Ok(())
}

/// `ferry boot-files`: a PXE tree (and ISO) with this manager's agent config inside.
pub fn boot_files(
    config: &ManagerConfig,
    out: &Path,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: &str,
    iso: bool,
) -> Result<()> {
    let from_boot_dir = |name: &str| -> Result<PathBuf> {
        let boot = config.boot.as_ref().with_context(|| {
            format!(
                "no --{name} given and the config has no boot server folder; pass --{name} FILE"
            )
        })?;
        Ok(boot.dir.join(if name == "kernel" {
            ferry_boot::KERNEL
        } else {
            ferry_boot::INITRD
        }))
    };
    let kernel = match kernel {
        Some(k) => k,
        None => from_boot_dir("kernel")?,
    };
    let initrd = match initrd {
        Some(i) => i,
        None => from_boot_dir("initrd")?,
    };
    let base = std::fs::read(&initrd).with_context(|| {
        format!(
            "reading ramdisk {} (build it with `cargo xtask ramdisk`)",
            initrd.display()
        )
    })?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let personal = out.join(".initrd.personal");
    std::fs::write(
        &personal,
        crate::bootserver::personalised_initrd(config, &base)?,
    )?;
    let tree = ferry_boot::pxe::write_tree(
        out,
        &kernel,
        &personal,
        append,
        Path::new(ferry_boot::pxe::IPXE_DIR),
    )?;
    for m in &tree.missing_loaders {
        eprintln!(
            "warning: {m} is missing (Debian package ipxe): plain-PXE firmware cannot chain to iPXE"
        );
    }
    if iso {
        ferry_boot::iso::make_iso(&out.join("ferry.iso"), &kernel, &personal, append)?;
    }
    std::fs::remove_file(&personal)?;
    println!(
        "wrote {} (vmlinuz, initrd.zst with this manager's agent config, boot.ipxe, undionly.kpxe, ipxe.efi, dnsmasq.conf{})",
        out.display(),
        if iso { ", ferry.iso" } else { "" }
    );
    Ok(())
}

/// `ferry boot-host`: stores one machine's extra kernel parameters.
pub async fn boot_host(config: &ManagerConfig, mac: &str, append: &str) -> Result<()> {
    let mac = ferry_boot::cmdline::parse_mac(mac)
        .with_context(|| format!("{mac:?} is not a MAC address such as 52:54:00:12:34:56"))?;
    let (_, errors) = ferry_boot::cmdline::parse(append);
    if let Some(e) = errors.first() {
        anyhow::bail!("{e}");
    }
    let store = ferry_mailbox::store::open(&config.store)?;
    let body = serde_json::to_vec_pretty(&crate::bootserver::HostBoot {
        append: append.to_string(),
    })?;
    store
        .put(&crate::bootserver::host_key(&mac), body.into())
        .await?;
    println!("{mac}: boots with {:?}", append);
    Ok(())
}

/// Sends `action` to an agent and waits for its answer; the answer's detail line.
async fn obey(fleet: &Fleet, id: &str, action: Action, timeout: Duration) -> Result<String> {
    let cmd = fleet.send(id, action, BTreeMap::new()).await?;
    let reply = fleet
        .await_reply(id, &cmd.command_id, timeout, Duration::from_millis(100))
        .await?;
    match reply.body {
        MessageBody::Done { detail, .. } => Ok(detail),
        other => anyhow::bail!("agent {id} did not obey: {other:?}"),
    }
}

/// `ferry poweroff` / `ferry reboot`.
pub async fn power(
    config: &ManagerConfig,
    id: &str,
    reboot: bool,
    timeout: Duration,
) -> Result<()> {
    let fleet = fleet(config)?;
    let id = fleet.resolve(id).await?;
    let action = if reboot {
        Action::Reboot
    } else {
        Action::Poweroff
    };
    let detail = obey(&fleet, &id, action, timeout).await?;
    println!("{}: {detail}", &id[..12]);
    Ok(())
}

/// `ferry survey`: the agent surveys its machine again; prints the new survey.
pub async fn survey(config: &ManagerConfig, id: &str, json: bool, timeout: Duration) -> Result<()> {
    let fleet = fleet(config)?;
    let id = fleet.resolve(id).await?;
    let detail = obey(&fleet, &id, Action::Survey, timeout).await?;
    let view = fleet.view(&id).await?;
    let survey = view
        .status
        .map(|s| s.survey)
        .with_context(|| format!("agent {id} answered but has no status"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&survey)?);
    } else {
        println!("{}: {detail}\n{}", &id[..12], survey.render());
    }
    Ok(())
}
