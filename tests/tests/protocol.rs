//! The mailbox protocol against hostile and broken input: every bad command is refused
//! with a message saying why, nothing runs twice, and the agent keeps serving.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_agent::config::AgentConfig;
use ferry_agent::runner::Agent;
use ferry_mailbox::seal::{COMMAND_TAG, KeyPair};
use ferry_mailbox::store::{self, Store, StoreConfig, StoreError};
use ferry_mailbox::{keys, time::now_ms};
use ferry_manager::fleet::Fleet;
use ferry_model::protocol::{
    Action, CommandPayload, Document, Identity, MessageBody, MessagePayload, Refusal, SCHEMA,
};
use ferry_tests::servers::Embedded;

struct Rig {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    manager: KeyPair,
    fleet: Fleet,
    agent: Agent,
}

fn agent_config(dir: &std::path::Path, store: StoreConfig, manager: &KeyPair) -> AgentConfig {
    AgentConfig {
        store,
        manager_key: manager.sign_public(),
        state_dir: dir.join("agent"),
        heartbeat_secs: 30.0,
        poll_secs: 0.05,
        kind: None,
    }
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let store_config = StoreConfig {
        url: format!("file://{}", dir.path().join("store").display()),
        ..Default::default()
    };
    let store = store::open(&store_config).expect("open store");
    let manager = KeyPair::generate();
    let agent = Agent::with_store(
        agent_config(dir.path(), store_config, &manager),
        store.clone(),
    )
    .expect("agent");
    // The fleet signs with the key the agent pins (a copy, as a replica would load it).
    manager.save(&dir.path().join("mk")).expect("save key");
    let fleet = Fleet::new(
        store.clone(),
        KeyPair::load(&dir.path().join("mk")).expect("load key"),
    );
    let mut rig = Rig {
        _dir: dir,
        store,
        manager,
        fleet,
        agent,
    };
    rig.agent.tick().await.expect("first tick");
    rig
}

impl Rig {
    fn id(&self) -> String {
        self.agent.id().to_string()
    }

    /// Runs the agent once and returns what the manager collects.
    async fn round(&mut self) -> Vec<MessagePayload> {
        self.agent.tick().await.expect("tick");
        let id = self.id();
        self.fleet
            .collect(&id)
            .await
            .expect("collect")
            .into_iter()
            .map(|r| r.message)
            .collect()
    }

    fn command(&self, seq: u64, action: Action) -> CommandPayload {
        CommandPayload {
            schema: SCHEMA,
            agent_id: self.id(),
            command_id: uuid::Uuid::now_v7().to_string(),
            seq,
            issued_ms: now_ms(),
            expires_ms: now_ms() + 60_000,
            action,
            secrets: BTreeMap::new(),
        }
    }

    async fn put_signed(&self, by: &KeyPair, cmd: &CommandPayload) -> Bytes {
        let bytes = Bytes::from(by.sign(COMMAND_TAG, &cmd.to_bytes()).to_bytes());
        self.store
            .put(&keys::command(&self.id(), &cmd.command_id), bytes.clone())
            .await
            .expect("put command");
        bytes
    }

    async fn pending_commands(&self) -> Vec<String> {
        self.store
            .list(&keys::commands(&self.id()))
            .await
            .expect("list")
            .objects
    }

    async fn assert_serving(&mut self) {
        let seq = self.agent_last_seq().await + 1;
        let ping = self.command(seq, Action::Ping { sent_ms: 1 });
        self.put_signed(&self.manager, &ping).await;
        let got = self.round().await;
        assert!(
            got.iter()
                .any(|m| matches!(m.body, MessageBody::Pong { .. })
                    && m.in_reply_to.as_deref() == Some(&ping.command_id)),
            "agent stopped serving: {got:?}"
        );
    }

    async fn agent_last_seq(&self) -> u64 {
        let status = self.fleet.view(&self.id()).await.expect("view").status;
        status.map(|s| s.last_command_seq).unwrap_or(0)
    }
}

fn refusals(msgs: &[MessagePayload]) -> Vec<(Refusal, String)> {
    msgs.iter()
        .filter_map(|m| match &m.body {
            MessageBody::Refused { reason, text, .. } => Some((*reason, text.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn garbage_and_truncated_files_are_refused_as_malformed() {
    let mut rig = rig().await;
    let id = rig.id();
    rig.store
        .put(
            &keys::command(&id, "garbage"),
            Bytes::from_static(b"\x00\xffnot json at all"),
        )
        .await
        .expect("put");
    let good = rig.command(5, Action::Ping { sent_ms: 1 });
    let env = rig.manager.sign(COMMAND_TAG, &good.to_bytes()).to_bytes();
    rig.store
        .put(
            &keys::command(&id, "truncated"),
            Bytes::from(env[..env.len() / 2].to_vec()),
        )
        .await
        .expect("put");
    rig.store
        .put(
            &keys::command(&id, "huge"),
            Bytes::from(vec![b' '; 2 << 20]),
        )
        .await
        .expect("put");
    let got = refusals(&rig.round().await);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|(r, _)| *r == Refusal::Malformed), "{got:?}");
    assert!(
        got.iter().any(|(_, t)| t.contains("garbage.json")),
        "refusal names the file: {got:?}"
    );
    assert!(
        rig.pending_commands().await.is_empty(),
        "refused files are removed"
    );
    // Reported once, not on every poll.
    assert!(refusals(&rig.round().await).is_empty());
    rig.assert_serving().await;
}

#[tokio::test]
async fn forged_misaddressed_expired_replayed_and_reordered_commands_are_refused() {
    let mut rig = rig().await;
    let id = rig.id();

    let forger = KeyPair::generate();
    let forged = rig.command(10, Action::Poweroff);
    rig.put_signed(&forger, &forged).await;
    let got = refusals(&rig.round().await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Refusal::BadSignature, "{got:?}");
    assert!(
        got[0].1.contains("not signed by the manager"),
        "{}",
        got[0].1
    );

    // Signed for another agent, then stored under a name that is not its id.
    let mut other = rig.command(11, Action::Poweroff);
    other.agent_id = "b".repeat(52);
    let env = rig.manager.sign(COMMAND_TAG, &other.to_bytes()).to_bytes();
    rig.store
        .put(&keys::command(&id, &other.command_id), env.into())
        .await
        .expect("put");
    let renamed = rig.command(12, Action::Poweroff);
    let env = rig
        .manager
        .sign(COMMAND_TAG, &renamed.to_bytes())
        .to_bytes();
    rig.store
        .put(&keys::command(&id, "another-name"), env.into())
        .await
        .expect("put");
    let got = refusals(&rig.round().await);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter().all(|(r, _)| *r == Refusal::Misaddressed),
        "{got:?}"
    );

    let mut expired = rig.command(13, Action::Ping { sent_ms: 1 });
    expired.issued_ms = now_ms() - 10_000;
    expired.expires_ms = now_ms() - 5_000;
    rig.put_signed(&rig.manager, &expired).await;
    let got = refusals(&rig.round().await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Refusal::Expired, "{got:?}");

    // A genuine ping runs; the same file put back later is a replay.
    let ping = rig.command(20, Action::Ping { sent_ms: 7 });
    let bytes = rig.put_signed(&rig.manager, &ping).await;
    let got = rig.round().await;
    assert!(
        got.iter()
            .any(|m| matches!(m.body, MessageBody::Pong { sent_ms: 7, .. })),
        "{got:?}"
    );
    rig.store
        .put(&keys::command(&id, &ping.command_id), bytes)
        .await
        .expect("replay");
    let got = rig.round().await;
    let r = refusals(&got);
    assert_eq!(r.len(), 1, "{got:?}");
    assert_eq!(r[0].0, Refusal::Replayed);
    assert!(
        !got.iter()
            .any(|m| matches!(m.body, MessageBody::Pong { .. })),
        "replay must not run"
    );

    // The same command re-signed with a newer seq (as a second manager replica
    // carrying a job on would send it) does not run again either.
    let mut resent = ping.clone();
    resent.seq = 21;
    rig.put_signed(&rig.manager, &resent).await;
    let got = rig.round().await;
    let r = refusals(&got);
    assert_eq!(r.len(), 1, "{got:?}");
    assert_eq!(r[0].0, Refusal::Replayed, "{r:?}");
    assert!(r[0].1.contains("already ran"), "{}", r[0].1);
    assert!(
        !got.iter()
            .any(|m| matches!(m.body, MessageBody::Pong { .. })),
        "a re-sent command must not run"
    );

    // A new command with a lower seq than one already run is out of order.
    let late = rig.command(15, Action::Ping { sent_ms: 1 });
    rig.put_signed(&rig.manager, &late).await;
    let r = refusals(&rig.round().await);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].0, Refusal::Reordered, "{r:?}");
    assert!(r[0].1.contains("new seq"), "says what to do: {}", r[0].1);

    // Two valid commands written out of order run in seq order.
    let b = rig.command(31, Action::Ping { sent_ms: 31 });
    let a = rig.command(30, Action::Ping { sent_ms: 30 });
    rig.put_signed(&rig.manager, &b).await;
    rig.put_signed(&rig.manager, &a).await;
    let got = rig.round().await;
    let order: Vec<u64> = got
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::Pong { sent_ms, .. } => Some(sent_ms),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![30, 31]);
    assert!(rig.pending_commands().await.is_empty());
    rig.assert_serving().await;
}

#[tokio::test]
async fn secrets_open_only_for_their_agent_and_command() {
    let mut rig = rig().await;
    let id = rig.id();
    let identity = Identity::parse(
        &rig.store
            .get(&keys::identity(&id))
            .await
            .expect("get")
            .expect("identity"),
    )
    .expect("parse");
    let mut cmd = rig.command(
        40,
        Action::CheckSecret {
            name: "library".into(),
        },
    );
    let sealed = Fleet::seal_for(&identity, &cmd.command_id, "library", b"hunter2").expect("seal");
    cmd.secrets.insert("library".into(), sealed.clone());
    rig.put_signed(&rig.manager, &cmd).await;
    let got = rig.round().await;
    let want = blake3_hex(b"hunter2");
    assert!(
        got.iter()
            .any(|m| matches!(&m.body, MessageBody::Done { detail, .. } if *detail == want)),
        "{got:?}"
    );
    // The same sealed secret moved into another command does not open.
    let mut moved = rig.command(
        41,
        Action::CheckSecret {
            name: "library".into(),
        },
    );
    moved.secrets.insert("library".into(), sealed);
    rig.put_signed(&rig.manager, &moved).await;
    let got = rig.round().await;
    assert!(
        got.iter()
            .any(|m| matches!(&m.body, MessageBody::Failed { code, .. } if code == "bad-secret")),
        "{got:?}"
    );
    // The plaintext never reaches the store.
    let log = rig
        .store
        .list(&format!("agents/{id}/log/"))
        .await
        .expect("list");
    for name in log.objects {
        let b = rig
            .store
            .get(&format!("agents/{id}/log/{name}"))
            .await
            .expect("get")
            .expect("obj");
        assert!(!String::from_utf8_lossy(&b).contains("hunter2"));
    }
}

fn blake3_hex(b: &[u8]) -> String {
    blake3::hash(b).to_hex().to_string()
}

#[tokio::test]
async fn a_message_forged_into_a_mailbox_is_set_aside_not_recorded() {
    let mut rig = rig().await;
    let id = rig.id();
    let forger = KeyPair::generate();
    let fake = MessagePayload {
        schema: SCHEMA,
        agent_id: id.clone(),
        seq: 999,
        message_id: "fake".into(),
        at_ms: now_ms(),
        in_reply_to: None,
        body: MessageBody::Alert {
            code: "x".into(),
            text: "forged".into(),
        },
    };
    let name = keys::message_name(999, "fake");
    let env = forger.sign(ferry_mailbox::seal::MESSAGE_TAG, &fake.to_bytes());
    rig.store
        .put(
            &format!("{}{name}", keys::messages(&id)),
            env.to_bytes().into(),
        )
        .await
        .expect("put");
    let got = rig.round().await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        rig.store
            .get(&keys::agent_log(&id, &name))
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        rig.store
            .get(&format!("agents/{id}/rejected/{name}"))
            .await
            .expect("get")
            .is_some(),
        "the forged file is kept for inspection"
    );
}

#[tokio::test]
async fn a_message_survives_a_store_outage_and_its_command_is_not_rerun() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut embedded = Embedded::start(&dir.path().join("m")).await.expect("store");
    let keys_ = embedded.config.keys().expect("keys");
    let config = agent_config(dir.path(), embedded.agent_store(), &keys_);
    let mut agent = Agent::new(config).expect("agent");
    agent.tick().await.expect("tick");
    let fleet = Fleet::new(store::open(&embedded.manager_store()).expect("open"), keys_);
    let id = agent.id().to_string();
    let cmd = fleet
        .send(&id, Action::Sleep { millis: 1500 }, BTreeMap::new())
        .await
        .expect("send");
    // The store goes away while the command runs: the answer must wait in the spool.
    let ticking = tokio::spawn(async move {
        let r = agent.tick().await;
        (agent, r)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    embedded.pause().await;
    let (mut agent, r) = ticking.await.expect("join");
    let err = r.expect_err("store is down");
    assert!(format!("{err:#}").contains("unreachable"), "{err:#}");
    assert!(agent.tick().await.is_err());
    embedded.resume().await.expect("resume");
    agent.tick().await.expect("tick after outage");
    agent.tick().await.expect("second tick");
    let replies = fleet
        .await_reply(
            &id,
            &cmd.command_id,
            Duration::from_secs(5),
            Duration::from_millis(50),
        )
        .await
        .expect("reply");
    assert!(
        matches!(replies.body, MessageBody::Done { .. }),
        "{replies:?}"
    );
    let all = fleet.replies(&id, &cmd.command_id).await.expect("replies");
    assert_eq!(
        all.len(),
        1,
        "exactly one answer, no refusal of its own command: {all:?}"
    );
    assert!(
        fleet
            .store()
            .list(&keys::commands(&id))
            .await
            .expect("list")
            .objects
            .is_empty(),
        "the finished command's file is gone"
    );
}

#[tokio::test]
async fn agent_credential_reaches_only_mailboxes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = Embedded::start(dir.path()).await.expect("store");
    let manager = store::open(&embedded.manager_store()).expect("open");
    let agent = store::open(&embedded.agent_store()).expect("open");
    let id = "c".repeat(52);
    let other = "d".repeat(52);
    manager
        .put(&keys::status(&other), Bytes::from_static(b"{}"))
        .await
        .expect("put");
    manager
        .put(&keys::agent_log(&id, "x.json"), Bytes::from_static(b"{}"))
        .await
        .expect("put");
    manager
        .put("jobs/j1.json", Bytes::from_static(b"{}"))
        .await
        .expect("put");

    // Inside its own mailbox: everything works.
    agent
        .put(&keys::heartbeat(&id), Bytes::from_static(b"{}"))
        .await
        .expect("own put");
    assert!(
        agent
            .get(&keys::heartbeat(&id))
            .await
            .expect("own get")
            .is_some()
    );
    agent.list(&keys::commands(&id)).await.expect("own list");
    agent
        .list(&keys::mailbox(&id))
        .await
        .expect("own mailbox list");
    agent
        .delete(&keys::heartbeat(&id))
        .await
        .expect("own delete");

    let denied = |r: Result<(), StoreError>, what: &str| match r {
        Err(StoreError::Denied { .. }) => {}
        other => panic!("{what}: expected Denied, got {other:?}"),
    };
    denied(
        agent.list(keys::MAILBOXES).await.map(|_| ()),
        "list all mailboxes",
    );
    denied(agent.list("").await.map(|_| ()), "list the bucket");
    denied(agent.list("agents/").await.map(|_| ()), "list agents/");
    denied(
        agent.get(&keys::agent_log(&id, "x.json")).await.map(|_| ()),
        "read the manager's log",
    );
    denied(agent.get("jobs/j1.json").await.map(|_| ()), "read a job");
    denied(agent.put("jobs/j2.json", Bytes::new()).await, "write a job");
    denied(agent.delete("jobs/j1.json").await, "delete a job");
    assert!(
        manager.get("jobs/j1.json").await.expect("get").is_some(),
        "nothing lost"
    );
}

#[tokio::test]
async fn a_survey_command_publishes_a_fresh_full_survey_before_answering() {
    let mut rig = rig().await;
    let before = rig
        .fleet
        .view(&rig.id())
        .await
        .expect("view")
        .status
        .expect("status");
    // The first tick already stored the full survey, not just the identity facts.
    assert!(
        before.survey.hardware.cpu.threads >= 1,
        "{:#?}",
        before.survey
    );
    let cmd = rig.command(1, Action::Survey);
    rig.put_signed(&rig.manager, &cmd).await;
    rig.agent.tick().await.expect("tick");
    // Read the status before collecting the answer, as `ferry survey` does after it.
    let view = rig.fleet.view(&rig.id()).await.expect("view");
    let got: Vec<MessagePayload> = rig
        .fleet
        .collect(&rig.id())
        .await
        .expect("collect")
        .into_iter()
        .map(|r| r.message)
        .collect();
    let done = got
        .iter()
        .find(|m| m.in_reply_to.as_deref() == Some(&cmd.command_id))
        .expect("an answer");
    match &done.body {
        MessageBody::Done { action, detail } => {
            assert_eq!(action, "survey");
            assert!(detail.starts_with("survey taken in"), "{detail}");
        }
        other => panic!("unexpected answer {other:?}"),
    }
    let s = view.status.expect("status").survey;
    assert_eq!(s.validate(), Vec::<String>::new());
    assert!(
        s.hardware.cpu.threads >= 1 && !s.os.network.interfaces.is_empty(),
        "{s:#?}"
    );
}
