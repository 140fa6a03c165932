//! `cargo xtask bench mailbox`: a fleet of simulated agents (the real agent loop, many per
//! process, sharing one store client) against Ferry's embedded store and against moto.
//! Reports store requests per agent at idle, the manager's full-scan time, and ping
//! latency for the poll interval, beside the targets, and appends the table to
//! `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferry_agent::config::AgentConfig;
use ferry_agent::runner::{Agent, run_agent};
use ferry_mailbox::seal::KeyPair;
use ferry_mailbox::store::{self, Store, StoreConfig};
use ferry_manager::fleet::Fleet;
use ferry_model::protocol::{Action, MessageBody};
use ferry_tests::bench::{machine, now_utc};
use ferry_tests::counting::{CountingStore, OPS};
use ferry_tests::servers::{Embedded, Moto, moto_program};
use rand::Rng;

struct Args {
    agents: usize,
    seconds: u64,
    poll: f64,
    heartbeat: f64,
    pings: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        agents: 1000,
        seconds: 60,
        poll: 5.0,
        heartbeat: 30.0,
        pings: 40,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--agents" => a.agents = value.parse()?,
            "--seconds" => a.seconds = value.parse()?,
            "--poll" => a.poll = value.parse()?,
            "--heartbeat" => a.heartbeat = value.parse()?,
            "--pings" => a.pings = value.parse()?,
            other => anyhow::bail!(
                "unknown option {other}; use --agents --seconds --poll --heartbeat --pings"
            ),
        }
    }
    Ok(a)
}

struct Row {
    backend: String,
    per_agent_min: f64,
    by_op: String,
    per_heartbeat: f64,
    scan_s: f64,
    online: usize,
    p50_ms: f64,
    p99_ms: f64,
    answered: usize,
    unanswered: usize,
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len().saturating_sub(1)) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

async fn bench(
    backend: &str,
    a: &Args,
    agent_store: StoreConfig,
    manager_store: StoreConfig,
    keys: KeyPair,
    work: &std::path::Path,
) -> Result<Row> {
    eprintln!(
        "[{backend}] starting {} agents (poll {} s, heartbeat {} s)",
        a.agents, a.poll, a.heartbeat
    );
    let counting = Arc::new(CountingStore::new(store::open(&agent_store)?));
    let shared: Arc<dyn Store> = counting.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for n in 0..a.agents {
        let config = AgentConfig {
            store: agent_store.clone(),
            manager_key: keys.sign_public(),
            state_dir: work.join(format!("{backend}/agent-{n}")),
            heartbeat_secs: a.heartbeat,
            poll_secs: a.poll,
            kind: None,
        };
        let agent = Agent::with_store(config, shared.clone())?;
        let mut rx = stop_rx.clone();
        // Spread first ticks over one poll interval, as agents started at different times.
        let delay = Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..a.poll));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            run_agent(agent, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        }));
    }
    let fleet = Fleet::new(store::open(&manager_store)?, keys);
    let start = Instant::now();
    loop {
        // A slow store may fail a listing now and then; only a lasting failure counts.
        let n = match fleet.agent_ids().await {
            Ok(ids) => ids.len(),
            Err(e) if start.elapsed() < Duration::from_secs(300) => {
                eprintln!("[{backend}] listing failed, retrying: {e:#}");
                0
            }
            Err(e) => return Err(e),
        };
        if n >= a.agents {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(300),
            "only {n} agents appeared in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "[{backend}] all agents in their mailboxes after {:.1} s; measuring idle for {} s",
        start.elapsed().as_secs_f64(),
        a.seconds
    );
    tokio::time::sleep(Duration::from_secs_f64(a.poll * 2.0)).await;
    counting.reset();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let counts = counting.counts();
    let minutes = t.elapsed().as_secs_f64() / 60.0;
    let total: u64 = counts.iter().sum();
    let per_agent_min = total as f64 / a.agents as f64 / minutes;
    let by_op = OPS
        .iter()
        .zip(counts)
        .filter(|(_, c)| *c > 0)
        .map(|(op, c)| format!("{op} {:.1}", c as f64 / a.agents as f64 / minutes))
        .collect::<Vec<_>>()
        .join(", ");

    let mut scans = Vec::new();
    let mut online = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let views = fleet.scan().await?;
        scans.push(t.elapsed().as_secs_f64());
        online = views
            .iter()
            .filter(|v| v.health == ferry_mailbox::health::Health::Online)
            .count();
    }
    let scan_s = quantile(&mut scans, 0.5);
    eprintln!("[{backend}] scan {scan_s:.2} s, {online} online; pinging");

    let ids = fleet.agent_ids().await?;
    let mut lat = Vec::new();
    let mut unanswered = 0;
    // An overloaded store must not stall the bench: pings stop after five minutes.
    let budget = Instant::now() + Duration::from_secs(300);
    for _ in 0..a.pings {
        if Instant::now() > budget {
            break;
        }
        let (id, wait) = {
            let mut rng = rand::thread_rng();
            (
                ids[rng.gen_range(0..ids.len())].clone(),
                rng.gen_range(0.0..a.poll),
            )
        };
        // Pings at random moments, so the agent's poll phase is random too.
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        let t = Instant::now();
        let cmd = fleet
            .send(&id, Action::Ping { sent_ms: 0 }, BTreeMap::new())
            .await?;
        let timeout = Duration::from_secs(30);
        match fleet
            .await_reply(&id, &cmd.command_id, timeout, Duration::from_millis(20))
            .await
        {
            Ok(reply) => {
                anyhow::ensure!(
                    matches!(reply.body, MessageBody::Pong { .. }),
                    "unexpected {reply:?}"
                );
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Err(_) => unanswered += 1,
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(Row {
        backend: backend.to_string(),
        per_agent_min,
        by_op,
        per_heartbeat: per_agent_min * a.heartbeat / 60.0,
        scan_s,
        online,
        answered: lat.len(),
        unanswered,
        p50_ms: quantile(&mut lat.clone(), 0.5),
        p99_ms: quantile(&mut lat, 0.99),
    })
}

fn main() -> Result<()> {
    let a = args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let work = tempfile::tempdir()?;
        let mut rows = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        {
            let e = Embedded::start(&work.path().join("embedded-store")).await?;
            rows.push(bench("embedded", &a, e.agent_store(), e.manager_store(), e.config.keys()?, work.path()).await?);
        }
        match moto_program() {
            Some(p) => {
                let m = Moto::start(&p, work.path()).await?;
                match bench("moto", &a, m.store.clone(), m.store.clone(), KeyPair::generate(), work.path()).await {
                    Ok(row) => rows.push(row),
                    Err(e) => failed.push(format!("moto did not complete the run: {e:#}")),
                }
            }
            None => eprintln!("moto_server not found: run `cargo xtask deps`; only the embedded store was measured"),
        }
        let target_ping = a.poll * 500.0 + 200.0;
        let mut table = format!(
            "\n### Mailbox: {} agents, poll {} s, heartbeat {} s — {} UTC, {}\n\n\
             | store | requests / agent / min (idle) | by operation | requests / agent / heartbeat | full scan of the fleet | online at scan | ping p50 | ping p99 | pings answered within 30 s |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            a.agents,
            a.poll,
            a.heartbeat,
            now_utc(),
            machine()
        );
        for r in &rows {
            table.push_str(&format!(
                "| {} | {:.1} | {} | {:.1} | {:.2} s ({:.2}× the 2 s target) | {}/{} | {:.0} ms ({:.2}× the {:.0} ms target) | {:.0} ms | {}/{} |\n",
                r.backend, r.per_agent_min, r.by_op, r.per_heartbeat, r.scan_s, r.scan_s / 2.0, r.online, a.agents,
                r.p50_ms, r.p50_ms / target_ping, target_ping, r.p99_ms, r.answered, r.answered + r.unanswered,
            ));
        }
        for f in &failed {
            table.push_str(&format!("\n{f}\n"));
        }
        print!("{table}");
        ferry_tests::bench::append(&table).context("writing docs/benchmarks.md")?;
        Ok(())
    })
}
