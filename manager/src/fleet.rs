//! The manager's view of its agents and its side of the mailbox protocol: scan, command,
//! collect. Stateless: everything it knows it reads from the store each time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry_mailbox::health::{self, Health};
use ferry_mailbox::seal::{self, COMMAND_TAG, KeyPair, MESSAGE_TAG};
use ferry_mailbox::time::now_ms;
use ferry_mailbox::{Store, keys};
use ferry_model::protocol::{
    Action, AgentKind, CommandPayload, Document, Heartbeat, Identity, MessageBody, MessagePayload,
    Refusal, SCHEMA, Sealed, Signed, Status, check_agent_id,
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::warn;

/// How long a command stays valid by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);

/// How many mailboxes are read at once during a scan.
const SCAN_CONCURRENCY: usize = 64;

/// What the manager knows of one agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// The agent id.
    pub id: String,
    /// Its identity, if readable.
    pub identity: Option<Identity>,
    /// Its last heartbeat, if readable.
    pub heartbeat: Option<Heartbeat>,
    /// Its status, if readable.
    pub status: Option<Status>,
    /// Health judged now.
    pub health: Health,
    /// Problems met while reading the mailbox.
    pub problems: Vec<String>,
}

impl AgentView {
    /// The kind its identity says (a ramdisk agent writes its identity first).
    pub fn kind(&self) -> Option<AgentKind> {
        self.identity.as_ref().map(|i| i.kind)
    }
}

/// A message recorded from a mailbox.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The message.
    pub message: MessagePayload,
    /// Its file name.
    pub name: String,
}

/// A manager's handle on the fleet.
pub struct Fleet {
    store: Arc<dyn Store>,
    keys: KeyPair,
    last_seq: AtomicU64,
}

impl Fleet {
    /// A fleet on `store`, commanded with `keys`.
    pub fn new(store: Arc<dyn Store>, keys: KeyPair) -> Self {
        Fleet {
            store,
            keys,
            last_seq: AtomicU64::new(0),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Ids of every mailbox in the store.
    pub async fn agent_ids(&self) -> Result<Vec<String>> {
        let listing = self.store.list(keys::MAILBOXES).await?;
        Ok(listing
            .folders
            .into_iter()
            .filter(|f| check_agent_id(f).is_ok())
            .collect())
    }

    /// Resolves a full id or a unique prefix of one.
    pub async fn resolve(&self, id_or_prefix: &str) -> Result<String> {
        let ids = self.agent_ids().await?;
        let found: Vec<_> = ids.iter().filter(|i| i.starts_with(id_or_prefix)).collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => anyhow::bail!("no agent with id {id_or_prefix:?}: `ferry agents` lists them"),
            many => anyhow::bail!(
                "{id_or_prefix:?} matches {} agents: give more characters",
                many.len()
            ),
        }
    }

    /// Reads one agent's identity, heartbeat and status.
    pub async fn view(&self, id: &str) -> Result<AgentView> {
        let (ik, hk, sk) = (keys::identity(id), keys::heartbeat(id), keys::status(id));
        let (identity, heartbeat, status) = tokio::try_join!(
            self.store.get(&ik),
            self.store.get(&hk),
            self.store.get(&sk),
        )?;
        let mut problems = Vec::new();
        fn read<T: Document>(bytes: Option<Bytes>, problems: &mut Vec<String>) -> Option<T> {
            match T::parse(&bytes?) {
                Ok(doc) => Some(doc),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            }
        }
        let identity: Option<Identity> = read(identity, &mut problems);
        let heartbeat: Option<Heartbeat> = read(heartbeat, &mut problems);
        let status: Option<Status> = read(status, &mut problems);
        for (what, agent) in [
            ("identity", identity.as_ref().map(|d| &d.agent_id)),
            ("heartbeat", heartbeat.as_ref().map(|d| &d.agent_id)),
            ("status", status.as_ref().map(|d| &d.agent_id)),
        ] {
            if agent.is_some_and(|a| a != id) {
                problems.push(format!("{what} names another agent"));
            }
        }
        Ok(AgentView {
            id: id.to_string(),
            health: health::judge(heartbeat.as_ref(), now_ms()),
            identity,
            heartbeat,
            status,
            problems,
        })
    }

    /// Reads every agent, many at a time.
    pub async fn scan(&self) -> Result<Vec<AgentView>> {
        let ids = self.agent_ids().await?;
        let mut views: Vec<AgentView> = futures::stream::iter(ids)
            .map(|id| async move { self.view(&id).await })
            .buffer_unordered(SCAN_CONCURRENCY)
            .try_collect()
            .await?;
        views.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(views)
    }

    /// A sequence number above every one this process used, based on the clock (µs).
    fn next_seq(&self, floor: u64) -> u64 {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut prev = self.last_seq.load(Ordering::Relaxed);
        loop {
            let next = now_us.max(prev + 1).max(floor + 1);
            match self
                .last_seq
                .compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Signs and writes a command into an agent's mailbox.
    pub async fn send(
        &self,
        agent: &str,
        action: Action,
        secrets: BTreeMap<String, Sealed>,
    ) -> Result<CommandPayload> {
        self.send_with(agent, action, secrets, DEFAULT_TTL, 0).await
    }

    /// Like [`Fleet::send`] with an explicit validity and a seq floor (e.g. from the agent's status).
    pub async fn send_with(
        &self,
        agent: &str,
        action: Action,
        secrets: BTreeMap<String, Sealed>,
        ttl: Duration,
        seq_floor: u64,
    ) -> Result<CommandPayload> {
        let command_id = uuid::Uuid::now_v7().to_string();
        self.send_full(agent, &command_id, action, secrets, ttl, seq_floor)
            .await
    }

    /// Like [`Fleet::send`] under a command id chosen beforehand (secrets are sealed
    /// to the command id).
    pub async fn send_prepared(
        &self,
        agent: &str,
        command_id: &str,
        action: Action,
        secrets: BTreeMap<String, Sealed>,
    ) -> Result<CommandPayload> {
        self.send_full(agent, command_id, action, secrets, DEFAULT_TTL, 0)
            .await
    }

    async fn send_full(
        &self,
        agent: &str,
        command_id: &str,
        action: Action,
        secrets: BTreeMap<String, Sealed>,
        ttl: Duration,
        seq_floor: u64,
    ) -> Result<CommandPayload> {
        let issued = now_ms();
        let cmd = CommandPayload {
            schema: SCHEMA,
            agent_id: agent.to_string(),
            command_id: command_id.to_string(),
            seq: self.next_seq(seq_floor),
            issued_ms: issued,
            expires_ms: issued + (ttl.as_millis() as u64).max(1),
            action,
            secrets,
        };
        let env = self.keys.sign(COMMAND_TAG, &cmd.to_bytes());
        self.store
            .put(
                &keys::command(agent, &cmd.command_id),
                env.to_bytes().into(),
            )
            .await
            .with_context(|| format!("sending {} to agent {agent}", cmd.action.name()))?;
        Ok(cmd)
    }

    /// Seals a secret to an agent for one command.
    pub fn seal_for(
        identity: &Identity,
        command_id: &str,
        name: &str,
        secret: &[u8],
    ) -> Result<Sealed> {
        let to = seal::seal_key(&identity.seal_key)?;
        Ok(seal::seal(
            &to,
            secret,
            &ferry_agent::runner::secret_context(&identity.agent_id, command_id, name),
        ))
    }

    /// Records every message in an agent's mailbox under `agents/<id>/`, then deletes it.
    /// Safe to run from many managers at once: each writes identical bytes to the same keys.
    pub async fn collect(&self, agent: &str) -> Result<Vec<Recorded>> {
        let listing = self.store.list(&keys::messages(agent)).await?;
        if listing.objects.is_empty() {
            return Ok(Vec::new());
        }
        let identity = self
            .store
            .get(&keys::identity(agent))
            .await?
            .map(|b| Identity::parse(&b))
            .transpose()
            .with_context(|| format!("identity of agent {agent}"))?;
        let verifier = identity
            .as_ref()
            .map(|i| seal::verifying_key(&i.sign_key))
            .transpose()?;
        let mut out = Vec::new();
        for name in listing.objects {
            let key = format!("{}{name}", keys::messages(agent));
            let Some(bytes) = self.store.get(&key).await? else {
                continue; // another manager took it
            };
            match verifier
                .as_ref()
                .ok_or_else(|| "the agent has no identity yet".to_string())
                .and_then(|v| open_message(agent, &name, &bytes, v))
            {
                Ok(message) => {
                    self.store
                        .put(&keys::agent_log(agent, &name), bytes.clone())
                        .await?;
                    if let Some(cmd) = &message.in_reply_to {
                        self.store
                            .put(&format!("{}{name}", keys::replies(agent, cmd)), bytes)
                            .await?;
                    }
                    out.push(Recorded {
                        message,
                        name: name.clone(),
                    });
                }
                Err(why) => {
                    warn!(agent, name, "rejected a message: {why}");
                    self.store
                        .put(&format!("agents/{agent}/rejected/{name}"), bytes)
                        .await?;
                }
            }
            self.store.delete(&key).await?;
        }
        Ok(out)
    }

    /// The recorded replies to one command, oldest first.
    pub async fn replies(&self, agent: &str, command: &str) -> Result<Vec<MessagePayload>> {
        let prefix = keys::replies(agent, command);
        let listing = self.store.list(&prefix).await?;
        let mut out = Vec::new();
        for name in listing.objects {
            if let Some(bytes) = self.store.get(&format!("{prefix}{name}")).await? {
                let env = Signed::parse(&bytes)?;
                let payload = base64_payload(&env)?;
                out.push(MessagePayload::parse(&payload)?);
            }
        }
        Ok(out)
    }

    /// The first answer to a command, if there is one yet (collecting the mailbox). A
    /// refusal as a replay is no answer: the command ran, or runs, under that id (sent
    /// again by another manager replica) and its answer comes.
    pub async fn reply_now(&self, agent: &str, command: &str) -> Result<Option<MessagePayload>> {
        let answer = |m: &MessagePayload| {
            m.in_reply_to.as_deref() == Some(command)
                && !matches!(
                    m.body,
                    MessageBody::Refused {
                        reason: Refusal::Replayed,
                        ..
                    }
                )
        };
        for r in self.collect(agent).await? {
            if answer(&r.message) {
                return Ok(Some(r.message));
            }
        }
        Ok(self
            .replies(agent, command)
            .await?
            .into_iter()
            .find(|m| answer(m)))
    }

    /// Waits for the first reply to a command, collecting the mailbox meanwhile.
    pub async fn await_reply(
        &self,
        agent: &str,
        command: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<MessagePayload> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.reply_now(agent, command).await? {
                return Ok(m);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "agent {agent} did not answer command {command} within {:.0} s: is it online (`ferry agents`)?",
                    timeout.as_secs_f64()
                );
            }
            tokio::time::sleep(poll).await;
        }
    }
}

fn base64_payload(env: &Signed) -> Result<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(&env.payload)
        .context("payload is not base64")
}

/// Verifies a message file against the agent's key and checks it belongs where it lies.
fn open_message(
    agent: &str,
    name: &str,
    bytes: &[u8],
    key: &ed25519_dalek::VerifyingKey,
) -> Result<MessagePayload, String> {
    let env = Signed::parse(bytes).map_err(|e| e.to_string())?;
    let payload = seal::verify(MESSAGE_TAG, &env, key).map_err(|e| e.to_string())?;
    let msg = MessagePayload::parse(&payload).map_err(|e| e.to_string())?;
    if msg.agent_id != agent {
        return Err(format!(
            "signed by agent {}, found in another mailbox",
            msg.agent_id
        ));
    }
    if keys::message_name(msg.seq, &msg.message_id) != name {
        return Err("its name does not match its seq and id".into());
    }
    Ok(msg)
}
