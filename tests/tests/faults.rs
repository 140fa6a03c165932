//! Faults with real processes: an agent killed mid-command, a store down for a minute,
//! and a manager replica killed during a stream of pings.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferry_agent::config::AgentConfig;
use ferry_mailbox::health::Health;
use ferry_mailbox::{keys, store};
use ferry_manager::config::ManagerConfig;
use ferry_manager::fleet::Fleet;
use ferry_model::protocol::{Action, Document, MessageBody, MessagePayload, Signed};
use ferry_tests::procs::{Proc, bin};
use ferry_tests::servers::Embedded;
use ferry_tests::util::{wait_port, wait_until};

/// Writes an agent config for `manager` with fast intervals and starts `ferry-agent`.
fn start_agent(
    manager: &ManagerConfig,
    dir: &Path,
    name: &str,
    heartbeat: f64,
    poll: f64,
) -> (Proc, AgentConfig, std::path::PathBuf) {
    let mut config = manager.agent_config(dir.join(name)).expect("agent config");
    config.heartbeat_secs = heartbeat;
    config.poll_secs = poll;
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config.to_yaml().expect("yaml")).expect("write config");
    let proc = spawn_agent(&path, &dir.join(format!("{name}.log")));
    (proc, config, path)
}

fn spawn_agent(config: &Path, log: &Path) -> Proc {
    Proc::spawn(
        "ferry-agent",
        Command::new(bin("ferry-agent"))
            .arg("run")
            .arg("--config")
            .arg(config),
        log,
    )
    .expect("start agent")
}

async fn only_agent(fleet: &Fleet) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ids) = fleet.agent_ids().await
            && let [one] = ids.as_slice()
        {
            return one.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's mailbox did not appear"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A store and one agent `a` polling every 0.2 s: the store, the agent, its config
/// file, a fleet on the store, and the agent's id.
async fn one_agent(
    dir: &Path,
    heartbeat: f64,
) -> (Embedded, Proc, std::path::PathBuf, Fleet, String) {
    let embedded = Embedded::start(&dir.join("m")).await.expect("store");
    let (agent, _, config_path) = start_agent(&embedded.config, dir, "a", heartbeat, 0.2);
    let fleet = Fleet::new(
        store::open(&embedded.manager_store()).expect("open"),
        embedded.config.keys().expect("keys"),
    );
    let id = only_agent(&fleet).await;
    (embedded, agent, config_path, fleet, id)
}

/// Sends agent `id` a sleep of `millis` and waits until it runs it.
async fn sleeping(fleet: &Fleet, id: &str, millis: u64) -> ferry_model::protocol::CommandPayload {
    let cmd = fleet
        .send(id, Action::Sleep { millis }, BTreeMap::new())
        .await
        .expect("send");
    wait_until(
        "the agent to start the command",
        Duration::from_secs(20),
        || async {
            let v = fleet.view(id).await?;
            Ok(v.status.is_some_and(|s| s.phase == "executing"))
        },
    )
    .await
    .expect("executing");
    cmd
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_while_executing_does_not_execute_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_embedded, mut agent, config_path, fleet, id) = one_agent(dir.path(), 2.0).await;

    let cmd = sleeping(&fleet, &id, 8_000).await;
    agent.kill_hard();
    let first_log = agent.log();
    assert_eq!(count(&first_log, "running command"), 1, "{first_log}");

    let log2 = dir.path().join("a-restarted.log");
    let restarted = spawn_agent(&config_path, &log2);
    let reply = fleet
        .await_reply(
            &id,
            &cmd.command_id,
            Duration::from_secs(30),
            Duration::from_millis(100),
        )
        .await
        .expect("a reply after restart");
    assert!(
        matches!(reply.body, MessageBody::Interrupted { seq } if seq == cmd.seq),
        "{reply:?}"
    );
    // Give it time to (wrongly) run the command again: it must not.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let replies = fleet.replies(&id, &cmd.command_id).await.expect("replies");
    assert_eq!(
        replies.len(),
        1,
        "only the interruption is reported: {replies:?}"
    );
    let log = restarted.log();
    assert_eq!(
        count(&log, "running command"),
        0,
        "re-executed after restart:\n{log}"
    );
    assert!(
        fleet
            .store()
            .list(&keys::commands(&id))
            .await
            .expect("list")
            .objects
            .is_empty()
    );
    // And it still serves.
    let report = ferry_manager::cli::ping_agent(&fleet, &id, 2, Duration::from_secs(20), |_, _| {})
        .await
        .expect("ping after restart");
    assert_eq!(report.latencies_ms.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_resume_after_the_store_is_down_and_lose_nothing() {
    let outage: u64 = std::env::var("FERRY_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut embedded = Embedded::start(&dir.path().join("m")).await.expect("store");
    let (agent, _, _) = start_agent(&embedded.config, dir.path(), "a", 2.0, 0.5);
    let fleet = Fleet::new(
        store::open(&embedded.manager_store()).expect("open"),
        embedded.config.keys().expect("keys"),
    );
    let id = only_agent(&fleet).await;
    wait_until("online", Duration::from_secs(20), || async {
        Ok(fleet.view(&id).await?.health == Health::Online)
    })
    .await
    .expect("online before");

    // A command is running when the store goes away; its answer must survive.
    let cmd = fleet
        .send(&id, Action::Sleep { millis: 3_000 }, BTreeMap::new())
        .await
        .expect("send");
    wait_until("executing", Duration::from_secs(20), || async {
        Ok(fleet
            .view(&id)
            .await?
            .status
            .is_some_and(|s| s.phase == "executing"))
    })
    .await
    .expect("executing");
    embedded.pause().await;
    tokio::time::sleep(Duration::from_secs(outage)).await;
    embedded.resume().await.expect("resume");

    let reply = fleet
        .await_reply(
            &id,
            &cmd.command_id,
            Duration::from_secs(60),
            Duration::from_millis(200),
        )
        .await
        .expect("the answer spooled during the outage arrives");
    assert!(matches!(reply.body, MessageBody::Done { .. }), "{reply:?}");
    wait_until("online again", Duration::from_secs(60), || async {
        Ok(fleet.view(&id).await?.health == Health::Online)
    })
    .await
    .expect("online after");
    // The heartbeat may come back before the status is rewritten with the error.
    wait_until(
        "the outage in the status",
        Duration::from_secs(60),
        || async {
            Ok(fleet
                .view(&id)
                .await?
                .status
                .is_some_and(|s| s.last_error.is_some()))
        },
    )
    .await
    .expect("the outage is reported in the status");
    let status = fleet.view(&id).await.expect("view").status.expect("status");
    let err = status
        .last_error
        .expect("the outage is reported in the status");
    assert_eq!(err.code, "store-unreachable");
    let report = ferry_manager::cli::ping_agent(&fleet, &id, 3, Duration::from_secs(20), |_, _| {})
        .await
        .expect("ping after outage");
    assert_eq!(report.latencies_ms.len(), 3);
    assert_eq!(
        fleet
            .replies(&id, &cmd.command_id)
            .await
            .expect("replies")
            .len(),
        1
    );
    assert!(agent.log().contains("retrying in"), "backoff is logged");
}

fn message_at(bytes: &[u8]) -> MessagePayload {
    use base64::Engine;
    let env = Signed::parse(bytes).expect("envelope");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(env.payload)
        .expect("b64");
    MessagePayload::parse(&payload).expect("message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_killed_every_ping_answered_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("m");
    let port = ferry_tests::util::free_port();
    let init = Command::new(bin("ferry"))
        .args(["init", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(&data)
        .output()
        .expect("ferry init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let config_path = data.join("ferry.yaml");
    let mut host_config = ManagerConfig::load(&config_path).expect("config");
    host_config.scan_secs = 0.2;
    host_config.save(&config_path).expect("save");
    // Replicas: same key and store, no embedded store of their own.
    let replica_config = ManagerConfig {
        embedded: None,
        ..host_config.clone()
    };
    let replica_path = data.join("replica.yaml");
    replica_config
        .save(&replica_path)
        .expect("save replica config");

    let serve = |name: &str, config: &Path| {
        Proc::spawn(
            name,
            Command::new(bin("ferry"))
                .arg("--config")
                .arg(config)
                .arg("serve"),
            &dir.path().join(format!("{name}.log")),
        )
        .expect("ferry serve")
    };
    let host = serve("host", &config_path);
    wait_port(&format!("127.0.0.1:{port}"), Duration::from_secs(20))
        .await
        .expect("store up");
    let mut replica1 = serve("replica1", &replica_path);
    let replica2 = serve("replica2", &replica_path);
    let (agent, _, _) = start_agent(&host_config, dir.path(), "a", 5.0, 0.2);

    let fleet = Arc::new(Fleet::new(
        store::open(&host_config.store).expect("open"),
        host_config.keys().expect("keys"),
    ));
    let id = only_agent(&fleet).await;
    let mut commands = Vec::new();
    for n in 0..200u32 {
        if n == 60 {
            replica1.kill_hard();
        }
        let cmd = fleet
            .send(&id, Action::Ping { sent_ms: n as u64 }, BTreeMap::new())
            .await
            .expect("send");
        // Wait for the answer as recorded by any manager (replicas or this one).
        let reply = fleet
            .await_reply(
                &id,
                &cmd.command_id,
                Duration::from_secs(30),
                Duration::from_millis(20),
            )
            .await
            .expect("answer");
        assert!(
            matches!(reply.body, MessageBody::Pong { sent_ms, .. } if sent_ms == n as u64),
            "{reply:?}"
        );
        commands.push(cmd);
    }
    // Let the surviving replica finish recording.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for cmd in &commands {
        let replies = fleet.replies(&id, &cmd.command_id).await.expect("replies");
        assert_eq!(
            replies.len(),
            1,
            "command {} answered {} times",
            cmd.seq,
            replies.len()
        );
    }
    let log = agent.log();
    assert_eq!(
        count(&log, "running command"),
        200,
        "no command executed twice"
    );
    assert_eq!(count(&log, "refused command"), 0, "{log}");
    // No message lost: the log holds a gap-free run of seqs, and the mailbox is drained.
    wait_until("the mailbox to drain", Duration::from_secs(20), || async {
        Ok(fleet
            .store()
            .list(&keys::messages(&id))
            .await?
            .objects
            .is_empty())
    })
    .await
    .expect("drained");
    let listing = fleet
        .store()
        .list(&format!("agents/{id}/log/"))
        .await
        .expect("list");
    let mut seqs = HashSet::new();
    for name in &listing.objects {
        let bytes = fleet
            .store()
            .get(&keys::agent_log(&id, name))
            .await
            .expect("get")
            .expect("obj");
        seqs.insert(message_at(&bytes).seq);
    }
    let max = seqs.iter().copied().max().unwrap_or(0);
    assert!(max >= 200, "{max}");
    assert_eq!(
        seqs.len() as u64,
        max,
        "message seqs 1..={max} all recorded"
    );
    assert!(
        replica2.log().contains("recorded message"),
        "the surviving replica worked"
    );
    drop(host);
}

/// A cancel stops a command the agent is running (it answers at once; the command
/// ends failed with code `cancelled` well before it would have), and a command whose
/// cancel is in the mailbox before the agent takes it up is answered cancelled
/// without running. A cancel of nothing running says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_running_command_and_one_not_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_embedded, mut agent, config_path, fleet, id) = one_agent(dir.path(), 1.0).await;
    let cancel = |command: &str| {
        let action = Action::Cancel {
            command: command.to_string(),
        };
        let (fleet, id) = (&fleet, &id);
        async move {
            let sent = fleet.send(id, action, BTreeMap::new()).await;
            sent.expect("send cancel").command_id
        }
    };
    let reply = |command: String, of: &Proc| {
        let (fleet, id, log) = (&fleet, &id, of.log());
        async move {
            let waited = Duration::from_millis(100);
            match fleet
                .await_reply(id, &command, Duration::from_secs(20), waited)
                .await
            {
                Ok(m) => m.body,
                Err(e) => panic!("{e:#}\n{log}"),
            }
        }
    };

    let sleep = sleeping(&fleet, &id, 120_000).await;
    let asked = std::time::Instant::now();
    let body = reply(cancel(&sleep.command_id).await, &agent).await;
    assert!(
        matches!(&body, MessageBody::Done { detail, .. } if detail.contains("stopping command")),
        "{body:?}"
    );
    let body = reply(sleep.command_id.clone(), &agent).await;
    assert!(
        matches!(&body, MessageBody::Failed { code, text, .. } if code == "cancelled" && text.contains("cancelled")),
        "{body:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );

    // Nothing runs now.
    let body = reply(cancel(&sleep.command_id).await, &agent).await;
    assert!(
        matches!(&body, MessageBody::Done { detail, .. } if detail.contains("not running here")),
        "{body:?}"
    );

    // A command and its cancel, both in the mailbox while the agent is stopped.
    agent.kill_hard();
    let later = fleet
        .send(&id, Action::Sleep { millis: 120_000 }, BTreeMap::new())
        .await
        .expect("send");
    let cancelled = cancel(&later.command_id).await;
    let restarted = spawn_agent(&config_path, &dir.path().join("a2.log"));
    let body = reply(later.command_id.clone(), &restarted).await;
    assert!(
        matches!(&body, MessageBody::Failed { code, text, .. } if code == "cancelled" && text.contains("before it started")),
        "{body:?}"
    );
    let body = reply(cancelled, &restarted).await;
    assert!(
        matches!(&body, MessageBody::Done { detail, .. } if detail.contains("cancelled before it started")),
        "{body:?}"
    );
    assert_eq!(
        count(&restarted.log(), "running command"),
        1,
        "{}",
        restarted.log()
    );
}
