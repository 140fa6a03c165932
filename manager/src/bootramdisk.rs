//! `ferry boot-ramdisk`: a server's installed agent swaps its boot to the Ferry
//! ramdisk (see the agent's `bootswap`). The manager publishes the ramdisk base in the
//! store under `boot/<sha256>/` (agents only connect out: they read it from there),
//! sends the command with the base's digests, and watches the server go from
//! *installed* to *ramdisk* — the same agent id, so the same machine — within a
//! deadline, or reports the attempt failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_mailbox::Store;
use ferry_model::protocol::{Action, AgentKind, BootMethod, MessageBody, RamdiskBase, Status};
use serde::Serialize;

use ferry_agent::bootswap::sha256_hex;

use crate::config::ManagerConfig;

/// What to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// How to enter the ramdisk.
    pub method: BootMethod,
    /// Only make the ramdisk and say which method; change nothing.
    pub check: bool,
    /// The ramdisk reboots back when its agent has not reached the store by then.
    pub fallback_secs: u32,
    /// How long to wait for the agent to make the ramdisk and answer.
    pub answer: Duration,
    /// How long to wait for the ramdisk agent after the answer.
    pub wait: Duration,
    /// The folder with `initrd-base.zst` (default: the boot server's).
    pub dir: Option<PathBuf>,
    /// Print JSON.
    pub json: bool,
}

/// What happened, for people and programs.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The agent.
    pub agent: String,
    /// The method used.
    pub method: BootMethod,
    /// Why.
    pub why: String,
    /// The kernel the ramdisk runs.
    pub kernel_release: String,
    /// Driver modules in it.
    pub modules: u32,
    /// Its size.
    pub bytes: u64,
    /// What it lacks.
    pub warnings: Vec<String>,
    /// Seconds from sending the command to the answer.
    pub answer_secs: f64,
    /// Seconds from sending the command to the ramdisk agent's status (not when only
    /// checked).
    pub ramdisk_secs: Option<f64>,
    /// How the ramdisk brought the network up.
    pub network: Option<String>,
}

/// Publishes the base in `dir` (unless the store has it) and returns where it is.
pub async fn publish(store: &dyn Store, dir: &Path) -> Result<RamdiskBase> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| {
            format!(
                "reading {} (build the ramdisk with `cargo xtask ramdisk`, which writes it)",
                path.display()
            )
        })
    };
    let base = read(ferry_boot::INITRD_BASE)?;
    let info = read(ferry_boot::INITRD_BASE_INFO)?;
    serde_json::from_slice::<ferry_initramfs::info::BaseInfo>(&info).with_context(|| {
        format!(
            "{} is not a ramdisk base's build information; build the ramdisk again",
            dir.join(ferry_boot::INITRD_BASE_INFO).display()
        )
    })?;
    let sha256 = sha256_hex(&base);
    let out = RamdiskBase {
        key: format!("boot/{sha256}/{}", ferry_boot::INITRD_BASE),
        sha256: sha256.clone(),
        bytes: base.len() as u64,
        info_key: format!("boot/{sha256}/{}", ferry_boot::INITRD_BASE_INFO),
        info_sha256: sha256_hex(&info),
    };
    // Content-addressed: what is there under the name is the same bytes. The info is
    // written last, so its presence means both are.
    let present = store
        .get(&out.info_key)
        .await?
        .is_some_and(|b| sha256_hex(&b) == out.info_sha256);
    if !present {
        store.put(&out.key, base.into()).await?;
        store.put(&out.info_key, info.into()).await?;
    }
    Ok(out)
}

/// `ferry boot-ramdisk`.
pub async fn boot_ramdisk(config: &ManagerConfig, id: &str, o: &Options) -> Result<Outcome> {
    let fleet = crate::cli::fleet(config)?;
    let id = fleet.resolve(id).await?;
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => base_dir(config)?,
    };
    let view = fleet.view(&id).await?;
    if let Some(s) = &view.status
        && s.kind == AgentKind::Ramdisk
    {
        bail!("agent {id} already runs the Ferry ramdisk");
    }
    let base = publish(fleet.store().as_ref(), &dir).await?;
    let started = Instant::now();
    let action = Action::BootRamdisk {
        method: o.method,
        base,
        fallback_secs: o.fallback_secs,
        check: o.check,
    };
    let cmd = fleet.send(&id, action, BTreeMap::new()).await?;
    let reply = fleet
        .await_reply(&id, &cmd.command_id, o.answer, Duration::from_millis(500))
        .await?;
    let answer_secs = started.elapsed().as_secs_f64();
    let prepared_ms = reply.at_ms;
    let mut out = match reply.body {
        MessageBody::RamdiskPrepared {
            method,
            why,
            kernel_release,
            modules,
            bytes,
            warnings,
            ..
        } => Outcome {
            agent: id.clone(),
            method,
            why,
            kernel_release,
            modules,
            bytes,
            warnings,
            answer_secs,
            ramdisk_secs: None,
            network: None,
        },
        MessageBody::Failed { text, .. } => bail!("agent {id}: boot-ramdisk failed: {text}"),
        other => bail!("agent {id} did not make its ramdisk: {other:?}"),
    };
    if o.check {
        return Ok(out);
    }
    let deadline = started + o.answer + o.wait;
    loop {
        let view = fleet.view(&id).await?;
        let handover = Handover::of(&view, prepared_ms);
        match view
            .status
            .as_ref()
            .and_then(|s| entered(s, &cmd.command_id, cmd.issued_ms, Some(&handover)))
        {
            Some(Ok(network)) => {
                out.ramdisk_secs = Some(started.elapsed().as_secs_f64());
                out.network = Some(network);
                return Ok(out);
            }
            Some(Err(why)) => bail!("agent {id}: {why}"),
            None => {}
        }
        if Instant::now() >= deadline {
            bail!(
                "agent {id}: {}",
                not_back((o.answer + o.wait).as_secs(), out.method, o.fallback_secs)
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The folder with the ramdisk base: the boot server's.
pub fn base_dir(config: &ManagerConfig) -> Result<PathBuf> {
    config
        .boot
        .as_ref()
        .map(|b| b.dir.clone())
        .context("the config has no boot server folder (boot.dir) to take the ramdisk base from; set it, or pass --boot-dir DIR (where `cargo xtask ramdisk` wrote initrd-base.zst)")
}

/// What the mailbox shows of an installed agent after it answered, at `prepared_ms`
/// (its own clock), that it had made its ramdisk and was rebooting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    /// When it answered.
    pub prepared_ms: u64,
    /// The kind its identity now says (a ramdisk agent writes its identity first).
    pub identity: Option<AgentKind>,
    /// Its last heartbeat.
    pub heartbeat_ms: Option<u64>,
}

impl Handover {
    /// From the agent's mailbox as it is now.
    pub fn of(view: &crate::fleet::AgentView, prepared_ms: u64) -> Handover {
        Handover {
            prepared_ms,
            identity: view.kind(),
            heartbeat_ms: view.heartbeat.as_ref().map(|h| h.at_ms),
        }
    }

    /// Whether an installed agent beats again well after handing over: the server is
    /// back on its own system. (The handing-over process stops beating; the slack
    /// covers its last writes when the store is slow.)
    fn back(&self) -> bool {
        self.identity == Some(AgentKind::Installed)
            && self
                .heartbeat_ms
                .is_some_and(|at| at > self.prepared_ms + BACK_SLACK_MS)
    }
}

/// Where boot-ramdisk command `command_id`, issued at `issued_ms`, stands in its
/// agent's status: `Some(Ok(network))` once the agent runs the ramdisk that command
/// made (how its network came up), `Some(Err(why))` once the attempt was reported
/// failed or the server is back on its own system after the `handover`, `None`
/// meanwhile.
pub fn entered(
    status: &Status,
    command_id: &str,
    issued_ms: u64,
    handover: Option<&Handover>,
) -> Option<Result<String, String>> {
    let boot = status.boot.as_ref();
    if status.kind == AgentKind::Ramdisk
        && boot
            .and_then(|b| b.entered.as_ref())
            .is_some_and(|e| e.command_id == command_id)
    {
        return Some(Ok(boot.map(|b| b.network.clone()).unwrap_or_default()));
    }
    if let Some(e) = status
        .last_error
        .as_ref()
        .filter(|e| e.code == "boot-ramdisk-failed" && e.at_ms >= issued_ms)
    {
        return Some(Err(e.text.clone()));
    }
    handover.is_some_and(Handover::back).then(|| {
        Err("the server did not come up in the Ferry ramdisk: it started its own system again (its boot loader did not take the ramdisk's entry, or the ramdisk fell back); the attempt failed".to_string())
    })
}

/// How long after its answer the installed agent handing over may still write.
const BACK_SLACK_MS: u64 = 30_000;

/// Why an attempt is given up after `secs` without the ramdisk.
pub fn not_back(secs: u64, method: BootMethod, fallback_secs: u32) -> String {
    format!(
        "the server did not come up in the Ferry ramdisk within {secs} s ({method}); the attempt failed. It comes back to its own system by itself once the ramdisk's fallback ({fallback_secs} s) has passed, or at its next reset; `ferry agents` shows which system it runs"
    )
}

/// Prints an outcome.
pub fn print(o: &Outcome, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(o)?);
        return Ok(());
    }
    let short = &o.agent[..o.agent.len().min(12)];
    println!(
        "{short}: ramdisk made in {:.1} s: kernel {}, {} driver modules, {:.1} MB; method {} ({})",
        o.answer_secs,
        o.kernel_release,
        o.modules,
        o.bytes as f64 / 1e6,
        o.method,
        o.why
    );
    for w in &o.warnings {
        println!("{short}: note: {w}");
    }
    match (o.ramdisk_secs, &o.network) {
        (Some(secs), network) => println!(
            "{short}: in the Ferry ramdisk {secs:.1} s after the command (network: {})",
            network.as_deref().unwrap_or("?")
        ),
        (None, _) => println!("{short}: checked only; nothing changed on the server"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_model::protocol::{BootReport, Entered, ReportedError, SCHEMA};

    fn status(kind: AgentKind, updated_ms: u64) -> Status {
        Status {
            schema: SCHEMA,
            agent_id: "a".into(),
            kind,
            phase: "idle".into(),
            step: None,
            progress: None,
            last_error: None,
            last_command_seq: 1,
            survey: Default::default(),
            boot: None,
            updated_ms,
        }
    }

    /// The ramdisk of this command is entered; a failure reported since the command,
    /// or an installed agent beating again well after it handed over, is the attempt
    /// failed; anything else is not known yet.
    #[test]
    fn an_attempt_is_entered_failed_or_not_known_yet() {
        let mut ramdisk = status(AgentKind::Ramdisk, 50_000);
        ramdisk.boot = Some(BootReport {
            network: "server eth0 10.0.2.15/24".into(),
            entered: Some(Entered {
                method: BootMethod::Kexec,
                command_id: "c1".into(),
                kernel_release: "6.1".into(),
            }),
            ..Default::default()
        });
        assert_eq!(
            entered(&ramdisk, "c1", 1_000, None),
            Some(Ok("server eth0 10.0.2.15/24".into()))
        );
        assert_eq!(entered(&ramdisk, "c2", 1_000, None), None);

        let mut failed = status(AgentKind::Installed, 3_000);
        failed.last_error = Some(ReportedError {
            code: "boot-ramdisk-failed".into(),
            text: "could not be entered".into(),
            at_ms: 2_500,
        });
        assert_eq!(
            entered(&failed, "c1", 1_000, None),
            Some(Err("could not be entered".into()))
        );
        assert_eq!(
            entered(&failed, "c1", 5_000, None),
            None,
            "an older failure"
        );

        let installed = status(AgentKind::Installed, 2_500);
        let handover = |identity, heartbeat_ms| Handover {
            prepared_ms: 2_000,
            identity: Some(identity),
            heartbeat_ms: Some(heartbeat_ms),
        };
        // Its last writes just after the answer; a ramdisk agent that has written its
        // identity but not yet its status; back on its own system much later.
        let last_beat = handover(AgentKind::Installed, 20_000);
        assert_eq!(entered(&installed, "c1", 1_000, Some(&last_beat)), None);
        let ramdisk_coming = handover(AgentKind::Ramdisk, 90_000);
        assert_eq!(
            entered(&installed, "c1", 1_000, Some(&ramdisk_coming)),
            None
        );
        let back = handover(AgentKind::Installed, 90_000);
        let failed = entered(&installed, "c1", 1_000, Some(&back));
        assert!(
            failed
                .as_ref()
                .is_some_and(|r| r.as_ref().is_err_and(|e| e.contains("own system again"))),
            "{failed:?}"
        );
    }
}
