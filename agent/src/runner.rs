//! The agent loop: publish identity, heartbeat, flush spooled messages, and run each
//! signed command from the mailbox at most once, refusing anything it cannot trust.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use ferry_mailbox::seal::{self, COMMAND_TAG, KeyPair, MESSAGE_TAG};
use ferry_mailbox::time::now_ms;
use ferry_mailbox::{Store, keys};
use ferry_model::protocol::{
    Action, AgentKind, BootReport, CommandPayload, Document, Heartbeat, Identity, MessageBody,
    MessagePayload, Progress, Refusal, ReportedError, SCHEMA, SECRET_LIBRARY_CREDENTIAL,
    SECRET_LIBRARY_PASSWORD, Signed, Status, StoreCredential,
};
use ferry_model::survey::Survey;
use rand::Rng;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::state::{AgentState, StateDir};

/// Why the loop ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A `poweroff` command was run.
    Poweroff,
    /// A `reboot` command was run (ramdisk agents only).
    Reboot,
    /// A `boot-ramdisk` command was answered: the server is to enter its ramdisk.
    BootRamdisk,
}

/// A running agent: its identity, store, state and pending work.
pub struct Agent {
    config: AgentConfig,
    store: Arc<dyn Store>,
    keys: KeyPair,
    manager: VerifyingKey,
    id: String,
    kind: AgentKind,
    state_dir: StateDir,
    state: AgentState,
    survey: Survey,
    boot: Option<BootReport>,
    boot_updates: Option<std::sync::mpsc::Receiver<BootReport>>,
    heartbeat_seq: u64,
    next_heartbeat: Instant,
    /// (key, BLAKE3 of content) of files already refused, so each is reported once.
    refused: HashSet<(String, [u8; 32])>,
    phase: &'static str,
    step: Option<String>,
    progress: Option<Progress>,
    last_error: Option<ReportedError>,
    status_due: bool,
    identity_done: bool,
    hot_until: Instant,
    /// The server's ramdisk, made by a `boot-ramdisk` command, to enter once the
    /// command is done.
    boot_swap: Option<crate::bootswap::Prepared>,
    /// Commands a cancel in the mailbox names (answered cancelled, never run).
    cancel_asked: HashSet<String>,
    /// Commands answered cancelled before they started, until their cancel is answered.
    cancelled_early: HashSet<String>,
}

/// A command file in the mailbox: its key, the BLAKE3 of its content, and the
/// checked command or why it is refused.
type Listed = (String, [u8; 32], Result<CommandPayload, (Refusal, String)>);

/// How long after a command the agent polls fast.
const HOT_WINDOW: Duration = Duration::from_secs(3);
/// The fast poll interval.
const HOT_POLL: Duration = Duration::from_millis(100);

/// Seals are bound to the agent, the command and the secret's name.
pub fn secret_context(agent: &str, command: &str, name: &str) -> Vec<u8> {
    format!("ferry secret v1/{agent}/{command}/{name}").into_bytes()
}

impl Agent {
    /// Loads (or makes) the agent's identity and state, and opens its store.
    pub fn new(config: AgentConfig) -> Result<Self> {
        let store = ferry_mailbox::store::open(&config.store)?;
        Self::with_store(config, store)
    }

    /// Like [`Agent::new`] with a store already open (the bench shares one client).
    pub fn with_store(config: AgentConfig, store: Arc<dyn Store>) -> Result<Self> {
        let manager = seal::verifying_key(&config.manager_key)
            .context("manager_key in the agent config is not an Ed25519 public key")?;
        let state_dir = StateDir::open(&config.state_dir)?;
        // Identity facts only: the full survey runs after the first heartbeat.
        let survey = crate::survey::quick(&crate::survey::Host::live());
        let id = crate::identity::load_or_create_id(
            &config.state_dir,
            &crate::survey::fingerprint(&survey),
        )?;
        let keys = crate::identity::load_or_create_keys(&config.state_dir)?;
        let state = state_dir.load()?;
        if config.kind.unwrap_or(AgentKind::Installed) == AgentKind::Installed {
            for what in crate::bootswap::clean_up(&config.state_dir) {
                info!("removed what an earlier boot-ramdisk left: {what}");
            }
        }
        Ok(Agent {
            kind: config.kind.unwrap_or(AgentKind::Installed),
            config,
            store,
            keys,
            manager,
            id,
            state_dir,
            state,
            survey,
            boot: None,
            boot_updates: None,
            heartbeat_seq: 0,
            next_heartbeat: Instant::now(),
            refused: HashSet::new(),
            phase: "idle",
            step: None,
            progress: None,
            last_error: None,
            status_due: true,
            identity_done: false,
            hot_until: Instant::now(),
            boot_swap: None,
            cancel_asked: HashSet::new(),
            cancelled_early: HashSet::new(),
        })
    }

    /// Attaches the ramdisk's boot report to every status this agent writes.
    pub fn set_boot_report(&mut self, report: BootReport) {
        self.boot = Some(report);
        self.status_due = true;
    }

    /// Later versions of the boot report (the ramdisk's init finishing its work).
    pub fn set_boot_updates(&mut self, updates: std::sync::mpsc::Receiver<BootReport>) {
        self.boot_updates = Some(updates);
    }

    /// The agent's id (its mailbox name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// One pass of the loop. `Ok(Some(_))` when a command ended the agent.
    pub async fn tick(&mut self) -> Result<Option<Stop>> {
        if !self.identity_done {
            self.publish_identity().await?;
            self.recover()?;
            self.identity_done = true;
            // Say "alive" before anything slower.
            self.heartbeat().await?;
            self.resurvey(Duration::from_secs(300)).await;
        }
        while let Some(report) = self.boot_updates.as_ref().and_then(|rx| rx.try_recv().ok()) {
            // Drivers loaded since the agent started may have brought disks and NICs.
            self.resurvey(Duration::ZERO).await;
            self.set_boot_report(report);
        }
        self.flush().await?;
        let stop = self.process_commands().await?;
        self.flush().await?;
        if Instant::now() >= self.next_heartbeat {
            self.heartbeat().await?;
        }
        if self.status_due {
            self.publish_status().await?;
        }
        Ok(stop)
    }

    /// Takes the full survey (on a thread: it runs tools) for the next status, unless
    /// this process took one less than `max_age` ago.
    pub async fn resurvey(&mut self, max_age: Duration) {
        match tokio::task::spawn_blocking(move || crate::survey::survey_within(max_age)).await {
            Ok(s) => self.survey = s,
            Err(e) => tracing::warn!("the survey failed: {e}"),
        }
        self.status_due = true;
    }

    /// Records a failure for the next status and schedules a status write.
    pub fn note_error(&mut self, code: &str, err: &anyhow::Error) {
        self.last_error = Some(ReportedError {
            code: code.to_string(),
            text: format!("{err:#}"),
            at_ms: now_ms(),
        });
        self.status_due = true;
    }

    async fn publish_identity(&mut self) -> Result<()> {
        let identity = Identity {
            schema: SCHEMA,
            agent_id: self.id.clone(),
            kind: self.kind,
            sign_key: self.keys.sign_public(),
            seal_key: self.keys.seal_public(),
            fingerprint: crate::survey::fingerprint(&self.survey),
            hostname: self.survey.hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            created_ms: now_ms(),
        };
        let key = keys::identity(&self.id);
        let current = self.store.get(&key).await?;
        let same = current
            .as_deref()
            .and_then(|b| Identity::parse(b).ok())
            .is_some_and(|old| {
                old.sign_key == identity.sign_key
                    && old.seal_key == identity.seal_key
                    && old.kind == identity.kind
            });
        if !same {
            if current.is_some() {
                warn!(
                    key,
                    "identity in the store differs from this agent's keys; rewriting it"
                );
            }
            self.store.put(&key, identity.to_bytes().into()).await?;
        }
        Ok(())
    }

    /// After a crash during a command: report it interrupted; it is never run again.
    fn recover(&mut self) -> Result<()> {
        if let Some(running) = self.state.running.take() {
            warn!(
                seq = running.seq,
                command = running.command_id,
                "a command was interrupted by a stop; it will not run again"
            );
            self.emit(
                Some(running.command_id.clone()),
                MessageBody::Interrupted { seq: running.seq },
            )?;
        }
        Ok(())
    }

    /// Signs a message, advances the message seq durably, and spools it.
    fn emit(&mut self, in_reply_to: Option<String>, body: MessageBody) -> Result<()> {
        let seq = self.state.message_seq + 1;
        self.state.message_seq = seq;
        self.state_dir.save(&self.state)?;
        let message_id = uuid::Uuid::now_v7().to_string();
        let payload = MessagePayload {
            schema: SCHEMA,
            agent_id: self.id.clone(),
            seq,
            message_id: message_id.clone(),
            at_ms: now_ms(),
            in_reply_to,
            body,
        };
        let env = self.keys.sign(MESSAGE_TAG, &payload.to_bytes());
        self.state_dir
            .spool(&keys::message_name(seq, &message_id), &env.to_bytes())
    }

    /// Stores every spooled message, oldest first; each leaves the spool only once stored.
    async fn flush(&mut self) -> Result<()> {
        for (name, bytes) in self.state_dir.spooled()? {
            let key = format!("{}{}", keys::messages(&self.id), name);
            self.store.put(&key, Bytes::from(bytes)).await?;
            self.state_dir.unspool(&name)?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self) -> Result<()> {
        let interval = self.config.heartbeat();
        self.heartbeat_seq += 1;
        let hb = Heartbeat {
            schema: SCHEMA,
            agent_id: self.id.clone(),
            seq: self.heartbeat_seq,
            at_ms: now_ms(),
            interval_ms: interval.as_millis() as u64,
        };
        self.store
            .put(&keys::heartbeat(&self.id), hb.to_bytes().into())
            .await?;
        // ±10 % jitter keeps a fleet that started together from beating in step.
        let jitter = rand::thread_rng().gen_range(0.9..1.1);
        self.next_heartbeat = Instant::now() + interval.mul_f64(jitter);
        Ok(())
    }

    async fn publish_status(&mut self) -> Result<()> {
        let status = Status {
            schema: SCHEMA,
            agent_id: self.id.clone(),
            kind: self.kind,
            phase: self.phase.to_string(),
            step: self.step.clone(),
            progress: self.progress.clone(),
            last_error: self.last_error.clone(),
            last_command_seq: self.state.last_seq,
            survey: self.survey.clone(),
            boot: self.boot.clone(),
            updated_ms: now_ms(),
        };
        self.store
            .put(&keys::status(&self.id), status.to_bytes().into())
            .await?;
        self.status_due = false;
        Ok(())
    }

    /// Checks a command file: envelope, signature, addressing, payload.
    fn check(&self, name: &str, bytes: &[u8]) -> Result<CommandPayload, (Refusal, String)> {
        let env = Signed::parse(bytes).map_err(|e| (Refusal::Malformed, e.to_string()))?;
        let payload = seal::verify(COMMAND_TAG, &env, &self.manager).map_err(|e| {
            (
                Refusal::BadSignature,
                format!("{e}: it was not signed by the manager this agent trusts"),
            )
        })?;
        let cmd =
            CommandPayload::parse(&payload).map_err(|e| (Refusal::Malformed, e.to_string()))?;
        if cmd.agent_id != self.id {
            return Err((
                Refusal::Misaddressed,
                format!("signed for agent {}, not this one", cmd.agent_id),
            ));
        }
        if name.strip_suffix(".json") != Some(cmd.command_id.as_str()) {
            return Err((
                Refusal::Misaddressed,
                format!("signed as command {} but stored as {name}", cmd.command_id),
            ));
        }
        Ok(cmd)
    }

    /// Reports a refusal and removes the refused file from the mailbox.
    async fn refuse(
        &mut self,
        key: &str,
        hash: [u8; 32],
        in_reply_to: Option<String>,
        reason: Refusal,
        text: String,
    ) -> Result<()> {
        warn!(key, reason = reason.code(), "refused command: {text}");
        self.emit(
            in_reply_to,
            MessageBody::Refused {
                key: key.to_string(),
                reason,
                text,
            },
        )?;
        self.refused.insert((key.to_string(), hash));
        // If the delete fails the file stays, and the hash keeps it from being reported twice.
        if let Err(e) = self.store.delete(key).await {
            warn!(key, "could not delete refused command: {e}");
        }
        Ok(())
    }

    /// The command files in the mailbox not refused yet: key, BLAKE3 of the content,
    /// and the checked command or why it is refused. (`&mut`: a shared borrow held
    /// across the awaits would need the agent to be `Sync`.)
    async fn listed_commands(&mut self) -> Result<Vec<Listed>> {
        let prefix = keys::commands(&self.id);
        let listing = self.store.list(&prefix).await?;
        let mut out = Vec::new();
        for name in listing.objects.iter().filter(|n| n.ends_with(".json")) {
            let key = format!("{prefix}{name}");
            let Some(bytes) = self.store.get(&key).await? else {
                continue;
            };
            let hash = *blake3::hash(&bytes).as_bytes();
            if self.refused.contains(&(key.clone(), hash)) {
                continue;
            }
            let checked = self.check(name, &bytes);
            out.push((key, hash, checked));
        }
        Ok(out)
    }

    async fn process_commands(&mut self) -> Result<Option<Stop>> {
        let mut ready = Vec::new();
        for (key, hash, checked) in self.listed_commands().await? {
            match checked {
                Ok(cmd) => ready.push((key, hash, cmd)),
                Err((reason, text)) => {
                    let text = format!("{key}: {text}");
                    self.refuse(&key, hash, None, reason, text).await?;
                }
            }
        }
        ready.sort_by_key(|(_, _, c)| c.seq);
        self.cancel_asked = ready
            .iter()
            .filter_map(|(_, _, c)| match &c.action {
                Action::Cancel { command } => Some(command.clone()),
                _ => None,
            })
            .collect();
        for (key, hash, cmd) in ready {
            if let Some(stop) = self.consider(&key, hash, cmd).await? {
                return Ok(Some(stop));
            }
        }
        Ok(None)
    }

    /// Refuses a command that was seen before, came out of order or expired; else runs it.
    async fn consider(
        &mut self,
        key: &str,
        hash: [u8; 32],
        cmd: CommandPayload,
    ) -> Result<Option<Stop>> {
        let reply = Some(cmd.command_id.clone());
        if cmd.seq <= self.state.last_seq {
            let known = self.state.find(cmd.seq).cloned();
            match known {
                // Our own command whose delete did not happen before a stop: finish the delete.
                Some(a) if a.command_id == cmd.command_id && !a.deleted => {
                    self.store.delete(key).await?;
                    self.state.mark_deleted(cmd.seq);
                    self.state_dir.save(&self.state)?;
                }
                Some(a) if a.command_id == cmd.command_id => {
                    let text = format!(
                        "{key}: command seq {} already ran; this is a replay",
                        cmd.seq
                    );
                    self.refuse(key, hash, reply, Refusal::Replayed, text)
                        .await?;
                }
                _ => {
                    let text = format!(
                        "{key}: command seq {} is not after the last accepted seq {}; re-send it with a new seq",
                        cmd.seq, self.state.last_seq
                    );
                    self.refuse(key, hash, reply, Refusal::Reordered, text)
                        .await?;
                }
            }
            return Ok(None);
        }
        // The same command re-signed with a newer seq (a job step sent again by another
        // manager replica that did not see it run) is still the same command.
        if self.state.knows(&cmd.command_id) {
            let text = format!(
                "{key}: command {} already ran (seq {} is a re-send of it)",
                cmd.command_id, cmd.seq
            );
            self.refuse(key, hash, reply, Refusal::Replayed, text)
                .await?;
            return Ok(None);
        }
        let now = now_ms();
        if now > cmd.expires_ms {
            let text = format!(
                "{key}: command expired {} ms ago; re-send it if it is still wanted",
                now - cmd.expires_ms
            );
            self.refuse(key, hash, reply, Refusal::Expired, text)
                .await?;
            return Ok(None);
        }

        // Write-ahead: once accepted on disk, the command can never run again.
        self.state.accept(cmd.seq, &cmd.command_id);
        self.state_dir.save(&self.state)?;
        let cancel = !matches!(cmd.action, Action::Cancel { .. })
            && self.cancel_asked.contains(&cmd.command_id);
        let (body, stop) = if cancel {
            info!(command = cmd.command_id, "cancelled before it started");
            self.cancelled_early.insert(cmd.command_id.clone());
            let body = MessageBody::Failed {
                action: cmd.action.name().to_string(),
                code: "cancelled".into(),
                text: "cancelled before it started; nothing was done".into(),
            };
            (body, None)
        } else {
            info!(
                seq = cmd.seq,
                command = cmd.command_id,
                action = cmd.action.name(),
                "running command"
            );
            self.execute(&cmd).await
        };
        self.state.running = None;
        self.emit(reply, body)?;
        self.store.delete(key).await?;
        self.state.mark_deleted(cmd.seq);
        self.state_dir.save(&self.state)?;
        self.flush().await?;
        self.status_due = true;
        Ok(stop)
    }

    async fn execute(&mut self, cmd: &CommandPayload) -> (MessageBody, Option<Stop>) {
        let action = cmd.action.name().to_string();
        match &cmd.action {
            Action::Ping { sent_ms } => (
                MessageBody::Pong {
                    sent_ms: *sent_ms,
                    received_ms: now_ms(),
                },
                None,
            ),
            Action::Sleep { millis } => {
                let (meter, rx) = Self::meter();
                let (wait, m) = (Duration::from_millis(*millis), meter.clone());
                let slept = self
                    .supervise(cmd, "executing", meter, rx, move || {
                        let started = Instant::now();
                        while started.elapsed() < wait {
                            m.check()?;
                            std::thread::sleep((wait - started.elapsed()).min(Duration::from_millis(50)));
                        }
                        Ok(MessageBody::Done {
                            action: "sleep".into(),
                            detail: format!("slept {} ms", wait.as_millis()),
                        })
                    })
                    .await;
                (Self::ended(&action, slept), None)
            }
            Action::Cancel { command } => (
                MessageBody::Done {
                    action,
                    detail: if self.cancelled_early.remove(command) {
                        format!("command {command} was cancelled before it started")
                    } else {
                        format!("command {command} is not running here: it has ended, or has not come")
                    },
                },
                None,
            ),
            Action::CheckSecret { name } => match self.open_secret(cmd, name) {
                Ok(Some(plain)) => (
                    MessageBody::Done {
                        action,
                        detail: blake3::hash(&plain).to_hex().to_string(),
                    },
                    None,
                ),
                Ok(None) => (
                    MessageBody::Failed {
                        action,
                        code: "no-such-secret".into(),
                        text: format!("the command carries no secret named {name:?}"),
                    },
                    None,
                ),
                Err(text) => (
                    MessageBody::Failed {
                        action,
                        code: Refusal::BadSecret.code().into(),
                        text,
                    },
                    None,
                ),
            },
            Action::Survey => {
                self.resurvey(Duration::ZERO).await;
                // The status carries the survey; it is stored before the answer so
                // whoever reads the answer finds the new survey.
                if let Err(e) = self.publish_status().await {
                    warn!("could not publish status: {e}");
                }
                let s = &self.survey;
                (
                    MessageBody::Done {
                        action,
                        detail: format!(
                            "survey taken in {} ms; {} fact(s) unknown",
                            s.took_ms,
                            s.gaps.len()
                        ),
                    },
                    None,
                )
            }
            Action::Capture { .. } | Action::Restore { .. } => {
                (self.run_image_action(cmd).await, None)
            }
            Action::BootRamdisk { .. } if self.kind == AgentKind::Ramdisk => (
                MessageBody::Failed {
                    action,
                    code: "unsupported".into(),
                    text: "this machine already runs the Ferry ramdisk".into(),
                },
                None,
            ),
            Action::BootRamdisk {
                method,
                base,
                fallback_secs,
                check,
            } => match self
                .prepare_boot(*method, base, *fallback_secs, &cmd.command_id)
                .await
            {
                Ok((prepared, warnings)) => {
                    let body = MessageBody::RamdiskPrepared {
                        method: prepared.method,
                        why: prepared.why.clone(),
                        kernel_release: prepared.release.clone(),
                        modules: prepared.modules,
                        bytes: prepared.bytes(),
                        rebooting: !check,
                        warnings,
                    };
                    if *check {
                        (body, None)
                    } else {
                        self.boot_swap = Some(prepared);
                        (body, Some(Stop::BootRamdisk))
                    }
                }
                Err(e) => (
                    MessageBody::Failed {
                        action,
                        code: "boot-ramdisk-failed".into(),
                        text: format!("{e:#}"),
                    },
                    None,
                ),
            },
            Action::Deploy { .. } if self.kind == AgentKind::Installed => (
                MessageBody::Failed {
                    action,
                    code: "unsupported".into(),
                    text: "a deploy wipes this machine's disks: it runs only in the Ferry ramdisk; boot this machine into it".into(),
                },
                None,
            ),
            Action::Deploy { reboot, .. } => {
                let body = self.run_image_action(cmd).await;
                let stop = (*reboot && matches!(body, MessageBody::Deployed { .. }))
                    .then_some(Stop::Reboot);
                (body, stop)
            }
            Action::Poweroff => (
                MessageBody::Done {
                    action,
                    detail: match self.kind {
                        AgentKind::Installed => "agent stopping".into(),
                        AgentKind::Ramdisk => "machine powering off".into(),
                    },
                },
                Some(Stop::Poweroff),
            ),
            Action::Reboot => match self.kind {
                AgentKind::Ramdisk => (
                    MessageBody::Done {
                        action,
                        detail: "machine rebooting".into(),
                    },
                    Some(Stop::Reboot),
                ),
                AgentKind::Installed => (
                    MessageBody::Failed {
                        action,
                        code: "unsupported".into(),
                        text: "an installed agent does not reboot its server; use the server's own tools".into(),
                    },
                    None,
                ),
            },
        }
    }
}

impl Agent {
    /// Makes the server's own ramdisk for `boot-ramdisk` (see [`crate::bootswap`]):
    /// the base read from the store and checked, the running kernel's drivers, the
    /// network from the survey; the method chosen. Changes nothing on the server.
    async fn prepare_boot(
        &mut self,
        method: ferry_model::protocol::BootMethod,
        base: &ferry_model::protocol::RamdiskBase,
        fallback_secs: u32,
        command_id: &str,
    ) -> Result<(crate::bootswap::Prepared, Vec<String>)> {
        use crate::bootswap;
        self.phase = "preparing the ramdisk";
        if let Err(e) = self.publish_status().await {
            warn!("could not publish status: {e}");
        }
        let fetch = async |what: &str, key: &str, sha256: &str| -> Result<Vec<u8>> {
            let data = self
                .store
                .get(key)
                .await
                .with_context(|| format!("reading the {what} {key} from the store"))?
                .with_context(|| {
                    format!("the {what} {key} is not in the store; publish it again (`ferry boot-ramdisk` does)")
                })?;
            bootswap::check_digest(what, key, &data, sha256)?;
            Ok(data.to_vec())
        };
        let info = fetch(
            "ramdisk base's build information",
            &base.info_key,
            &base.info_sha256,
        )
        .await?;
        let info: ferry_initramfs::info::BaseInfo =
            serde_json::from_slice(&info).with_context(|| {
                format!(
                    "{} is not a ramdisk base's build information",
                    base.info_key
                )
            })?;
        let data = fetch("ramdisk base", &base.key, &base.sha256).await?;
        anyhow::ensure!(
            data.len() as u64 == base.bytes,
            "the ramdisk base {} has {} bytes, not the {} the command names",
            base.key,
            data.len(),
            base.bytes
        );
        self.resurvey(Duration::from_secs(300)).await;
        let (network, mut warnings) =
            crate::ramdisk::hostnet::HostNetwork::from_survey(&self.survey.os.network);
        anyhow::ensure!(
            !network.links.is_empty(),
            "this server has no IPv4 address on an Ethernet interface for the ramdisk to bring up"
        );
        let state_dir = self.config.state_dir.clone();
        let (facts, drivers, modules) = tokio::task::spawn_blocking(move || -> Result<_> {
            let facts = bootswap::Facts::gather(&state_dir);
            let dir = Path::new("/lib/modules").join(&facts.release);
            let (drivers, modules) = bootswap::drivers_layer(&dir, &info, 3)?;
            Ok((facts, drivers.to_bytes(), modules))
        })
        .await
        .context("preparing the ramdisk stopped unexpectedly")??;
        let bytes = (drivers.len() + data.len()) as u64;
        let (method, why) = bootswap::choose(method, &facts, bytes)?;
        warnings.extend((modules == 0).then(|| {
            format!(
                "kernel {} has no loadable storage or network drivers here",
                facts.release
            )
        }));
        self.phase = "idle";
        self.status_due = true;
        Ok((
            bootswap::Prepared {
                method,
                why,
                release: facts.release.clone(),
                kernel: facts.kernel.clone(),
                modules,
                drivers,
                base: data,
                grub: facts.grub.clone().ok(),
                cmdline: bootswap::kernel_cmdline(&facts.consoles),
                params: bootswap::ramdisk_params(fallback_secs),
                network,
                command_id: command_id.to_string(),
            },
            warnings,
        ))
    }

    /// Enters the ramdisk a `boot-ramdisk` command made, now that the command is done
    /// (its state goes along). On failure the server's boot is as it was.
    pub fn enter_ramdisk(&mut self) -> Result<()> {
        let Some(prepared) = self.boot_swap.take() else {
            anyhow::bail!("no ramdisk was prepared");
        };
        info!(method = %prepared.method, "entering the Ferry ramdisk");
        prepared.enter(&self.config).inspect_err(|_| {
            for what in crate::bootswap::clean_up(&self.config.state_dir) {
                info!("undone: {what}");
            }
        })
    }

    /// Opens a sealed secret of `cmd`; `Ok(None)` when it has none by that name.
    fn open_secret(&self, cmd: &CommandPayload, name: &str) -> Result<Option<Vec<u8>>, String> {
        cmd.secrets
            .get(name)
            .map(|sealed| {
                self.keys
                    .open(sealed, &secret_context(&self.id, &cmd.command_id, name))
                    .map_err(|e| format!("secret {name:?}: {e}"))
            })
            .transpose()
    }

    /// The library password and store credential a capture or restore carries; or
    /// the failure's code and text.
    fn library_secrets(&self, cmd: &CommandPayload) -> Result<LibrarySecrets, (String, String)> {
        let bad = |code: &str, text: String| (code.to_string(), text);
        let password = self
            .open_secret(cmd, SECRET_LIBRARY_PASSWORD)
            .map_err(|t| bad(Refusal::BadSecret.code(), t))?
            .ok_or_else(|| {
                bad(
                    "no-such-secret",
                    format!("the command carries no {SECRET_LIBRARY_PASSWORD:?} secret"),
                )
            })?;
        let password = String::from_utf8(password).map_err(|_| {
            bad(
                Refusal::BadSecret.code(),
                "the library password is not UTF-8".into(),
            )
        })?;
        let credential = match self.open_secret(cmd, SECRET_LIBRARY_CREDENTIAL) {
            Ok(Some(bytes)) => Some(serde_json::from_slice::<StoreCredential>(&bytes).map_err(
                |e| {
                    bad(
                        Refusal::BadSecret.code(),
                        format!("secret {SECRET_LIBRARY_CREDENTIAL:?} is not a credential: {e}"),
                    )
                },
            )?),
            Ok(None) => None,
            Err(t) => return Err(bad(Refusal::BadSecret.code(), t)),
        };
        Ok(LibrarySecrets {
            password,
            credential,
        })
    }

    /// Runs a capture or restore on a blocking thread; meanwhile its progress goes
    /// into the status (at most every second) and heartbeats go on.
    async fn run_image_action(&mut self, cmd: &CommandPayload) -> MessageBody {
        let action = cmd.action.name();
        let secrets = match self.library_secrets(cmd) {
            Ok(s) => s,
            Err((code, text)) => {
                return MessageBody::Failed {
                    action: action.to_string(),
                    code,
                    text,
                };
            }
        };
        let (meter, rx) = Self::meter();
        let work = {
            let (action, meter) = (cmd.action.clone(), meter.clone());
            // The agent keeps writing its state and spool while it captures.
            let keep = [self.state_dir.path().to_path_buf()];
            move || crate::library::run_command(&action, &secrets, &keep, &meter)
        };
        let phase = match action {
            "capture" => "capturing",
            "deploy" => "deploying",
            _ => "restoring",
        };
        let result = self.supervise(cmd, phase, meter, rx, work).await;
        Self::ended(action, result)
    }

    /// A meter whose readings come out of the receiver.
    fn meter() -> (
        Arc<ferry_image::Meter>,
        tokio::sync::watch::Receiver<Option<ferry_image::Report>>,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(None::<ferry_image::Report>);
        let meter = ferry_image::Meter::new(
            Duration::from_secs(1),
            Some(Box::new(move |r: &ferry_image::Report| {
                let _ = tx.send(Some(r.clone()));
            })),
        );
        (meter, rx)
    }

    /// Runs `work` (blocking) for command `cmd` in `phase` while the agent keeps
    /// heartbeating, publishes the progress `rx` brings from `meter`, and looks for a cancel
    /// of the command in its mailbox — which `meter` then passes on to the work.
    async fn supervise(
        &mut self,
        cmd: &CommandPayload,
        phase: &'static str,
        meter: Arc<ferry_image::Meter>,
        mut rx: tokio::sync::watch::Receiver<Option<ferry_image::Report>>,
        work: impl FnOnce() -> Result<MessageBody> + Send + 'static,
    ) -> Result<Result<MessageBody>, tokio::task::JoinError> {
        let job = tokio::task::spawn_blocking(work);
        tokio::pin!(job);
        self.phase = phase;
        if let Err(e) = self.publish_status().await {
            warn!("could not publish status: {e}");
        }
        let mut reports_open = true;
        let look_every = self.config.poll().max(Duration::from_millis(500));
        let mut next_look = Instant::now() + look_every;
        let result = loop {
            let beat = self
                .next_heartbeat
                .saturating_duration_since(Instant::now());
            tokio::select! {
                r = &mut job => break r,
                changed = rx.changed(), if reports_open => {
                    if changed.is_err() {
                        reports_open = false;
                        continue;
                    }
                    let report = rx.borrow_and_update().clone();
                    if let Some(r) = report {
                        self.step = Some(r.phase.clone());
                        self.progress = Some(Progress {
                            done: r.bytes,
                            total: r.bytes_total.unwrap_or(0),
                            rate: r.rate,
                            eta_secs: r.eta_secs,
                            files: Some(r.files),
                        });
                        if let Err(e) = self.publish_status().await {
                            warn!("could not publish status: {e}");
                        }
                    }
                }
                _ = tokio::time::sleep(beat) => {
                    if let Err(e) = self.heartbeat().await {
                        warn!("could not write heartbeat: {e}");
                        self.next_heartbeat = Instant::now() + Duration::from_secs(5);
                    }
                }
                _ = tokio::time::sleep_until(next_look.into()) => {
                    next_look = Instant::now() + look_every;
                    match self.take_cancel(&cmd.command_id).await {
                        Ok(true) => meter.cancel(),
                        Ok(false) => {}
                        Err(e) => warn!("could not look for a cancel: {e:#}"),
                    }
                }
            }
        };
        self.phase = "idle";
        self.step = None;
        self.progress = None;
        self.status_due = true;
        result
    }

    /// A cancel of the running command `running` in the mailbox, if there is one:
    /// taken out of turn (remembered, answered, deleted), so the command can stop.
    async fn take_cancel(&mut self, running: &str) -> Result<bool> {
        for (key, _, checked) in self.listed_commands().await? {
            // Anything wrong with it is refused later, in turn.
            let Ok(cmd) = checked else {
                continue;
            };
            let Action::Cancel { command } = &cmd.action else {
                continue;
            };
            if command != running
                || cmd.seq <= self.state.last_seq
                || self.state.knows(&cmd.command_id)
                || now_ms() > cmd.expires_ms
            {
                continue;
            }
            info!(
                command = running,
                cancel = cmd.command_id,
                "cancel: stopping the command"
            );
            self.state.accept_out_of_turn(cmd.seq, &cmd.command_id);
            self.state_dir.save(&self.state)?;
            self.emit(
                Some(cmd.command_id.clone()),
                MessageBody::Done {
                    action: "cancel".into(),
                    detail: format!("stopping command {running} at its next chunk of data or step"),
                },
            )?;
            self.store.delete(&key).await?;
            self.state.mark_deleted(cmd.seq);
            self.state_dir.save(&self.state)?;
            self.flush().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The answer for a command whose work ended with `result`.
    fn ended(
        action: &str,
        result: Result<Result<MessageBody>, tokio::task::JoinError>,
    ) -> MessageBody {
        match result {
            Ok(Ok(body)) => body,
            Ok(Err(e)) if e.chain().any(|c| c.is::<ferry_image::Cancelled>()) => {
                MessageBody::Failed {
                    action: action.to_string(),
                    code: "cancelled".into(),
                    text: format!("{e:#}"),
                }
            }
            Ok(Err(e)) => MessageBody::Failed {
                action: action.to_string(),
                code: format!("{action}-failed"),
                text: format!("{e:#}"),
            },
            Err(e) => MessageBody::Failed {
                action: action.to_string(),
                code: "crashed".into(),
                text: format!("the {action} stopped unexpectedly: {e}"),
            },
        }
    }
}

/// What opens a library, from a command's sealed secrets.
pub struct LibrarySecrets {
    /// The repository password.
    pub password: String,
    /// The store credential scoped to the library.
    pub credential: Option<StoreCredential>,
}

/// Runs the agent until a `poweroff` command or `shutdown` resolves. Store outages are
/// retried with exponential backoff (0.5 s doubling to 30 s); nothing is lost meanwhile.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<Stop> {
    run_agent(Agent::new(config)?, shutdown).await
}

/// Runs an agent made with [`Agent::with_store`] (the bench runs a fleet on one client).
pub async fn run_agent(mut agent: Agent, shutdown: impl Future<Output = ()>) -> Result<Stop> {
    let poll = agent.config.poll();
    info!(agent = agent.id(), "agent started");
    tokio::pin!(shutdown);
    let mut backoff = Duration::ZERO;
    loop {
        let ran_before = agent.state.last_seq;
        let delay = match agent.tick().await {
            Ok(Some(Stop::BootRamdisk)) => match agent.enter_ramdisk() {
                Ok(()) => {
                    info!("the server is rebooting into the Ferry ramdisk");
                    return Ok(Stop::BootRamdisk);
                }
                Err(e) => {
                    warn!("could not enter the ramdisk: {e:#}");
                    agent.note_error("boot-ramdisk-failed", &e);
                    let body = MessageBody::Alert {
                        code: "boot-ramdisk-failed".into(),
                        text: format!(
                            "the ramdisk was made but could not be entered: {e:#}; the server's boot is as it was"
                        ),
                    };
                    if let Err(e) = agent.emit(None, body) {
                        warn!("could not spool the alert: {e:#}");
                    }
                    Duration::ZERO
                }
            },
            Ok(Some(stop)) => {
                info!(?stop, "agent stopping on command");
                return Ok(stop);
            }
            Ok(None) => {
                backoff = Duration::ZERO;
                if agent.kind == AgentKind::Ramdisk {
                    crate::ramdisk::mark_reached();
                }
                // Right after a command, look again soon: commands tend to come in runs.
                if agent.state.last_seq != ran_before {
                    agent.hot_until = Instant::now() + HOT_WINDOW;
                }
                if Instant::now() < agent.hot_until {
                    poll.min(HOT_POLL)
                } else {
                    poll
                }
            }
            Err(e) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(500), Duration::from_secs(30));
                warn!("{e:#}; retrying in {:.1} s", backoff.as_secs_f64());
                agent.note_error("store-unreachable", &e);
                backoff
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut shutdown => {
                info!("agent stopping on signal");
                return Ok(Stop::Poweroff);
            }
        }
    }
}
