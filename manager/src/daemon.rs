//! `ferry serve`: the embedded store (if configured), the loop that records agent
//! messages and watches health, and the one that carries jobs on.
//! Any number of replicas may run on one store.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ferry_mailbox::health::Health;
use ferry_model::job::JobStatus;
use futures::StreamExt;
use tracing::{info, warn};

use crate::config::ManagerConfig;
use crate::fleet::Fleet;

/// How many scans pass between health checks (each costs three reads per agent).
const HEALTH_EVERY: u32 = 5;

/// Runs the embedded store (if any) and the daemon loop until `shutdown`.
pub async fn serve(config: ManagerConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let store_task = match &config.embedded {
        Some(embedded) => {
            let listener = crate::embedded::bind(embedded).await?;
            let embedded = embedded.clone();
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                crate::embedded::serve(&embedded, listener, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            }))
        }
        None => None,
    };
    let store = ferry_mailbox::store::open(&config.store)?;
    let boot_task = match &config.boot {
        Some(boot) => {
            let listener = crate::bootserver::bind(boot).await?;
            let (config, boot, store) = (config.clone(), boot.clone(), store.clone());
            let mut rx = stop_rx.clone();
            Some(tokio::spawn(async move {
                crate::bootserver::serve(config, boot, store, listener, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            }))
        }
        None => None,
    };
    let fleet = Arc::new(Fleet::new(store, config.keys()?));
    let scan = Duration::from_secs_f64(config.scan_secs.max(0.05));
    let jobs_task = config.carry_jobs.then(|| {
        let (config, fleet) = (config.clone(), fleet.clone());
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            carry_jobs_on(&config, &fleet, scan, async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    });
    drop(stop_rx);
    watch_fleet(&fleet, scan, shutdown).await;
    info!("shutting down");
    let _ = stop_tx.send(true);
    if let Some(t) = jobs_task {
        let _ = t.await;
    }
    if let Some(t) = boot_task {
        t.await??;
    }
    if let Some(t) = store_task {
        t.await??;
    }
    Ok(())
}

/// Every `scan` (at least a second), carries every job that has not ended on. Ended
/// jobs are remembered here only to skip reading them again.
pub async fn carry_jobs_on(
    config: &ManagerConfig,
    fleet: &Fleet,
    scan: Duration,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ended: HashSet<String> = HashSet::new();
    loop {
        match crate::jobs::ids(fleet.store()).await {
            Ok(ids) => {
                for id in ids {
                    if ended.contains(&id) {
                        continue;
                    }
                    match crate::jobs::engine::advance(config, fleet, &id).await {
                        Ok(job) if job.state().status != JobStatus::Running => {
                            ended.insert(id);
                        }
                        Ok(_) => {}
                        Err(e) => warn!(job = %id, "carrying the job on failed: {e:#}"),
                    }
                }
            }
            Err(e) => warn!("listing jobs failed: {e:#}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(scan.max(Duration::from_secs(1))) => {}
            _ = &mut shutdown => return,
        }
    }
}

/// Scans the fleet every `scan`: records messages, logs health changes.
pub async fn watch_fleet(fleet: &Fleet, scan: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut health: HashMap<String, Health> = HashMap::new();
    let mut round: u32 = 0;
    loop {
        if let Err(e) = scan_once(fleet, &mut health, round.is_multiple_of(HEALTH_EVERY)).await {
            warn!("fleet scan failed: {e:#}");
        }
        round = round.wrapping_add(1);
        tokio::select! {
            _ = tokio::time::sleep(scan) => {}
            _ = &mut shutdown => return,
        }
    }
}

async fn scan_once(
    fleet: &Fleet,
    health: &mut HashMap<String, Health>,
    check_health: bool,
) -> Result<()> {
    let ids = fleet.agent_ids().await?;
    let results: Vec<_> = futures::stream::iter(ids.iter())
        .map(|id| async move {
            let recorded = fleet.collect(id).await;
            let view = if check_health {
                Some(fleet.view(id).await)
            } else {
                None
            };
            (id, recorded, view)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (id, recorded, view) in results {
        match recorded {
            Ok(msgs) => {
                for r in msgs {
                    info!(agent = %id, seq = r.message.seq, reply_to = ?r.message.in_reply_to, body = ?r.message.body, "recorded message");
                }
            }
            Err(e) => warn!(agent = %id, "collecting messages failed: {e:#}"),
        }
        if let Some(Ok(view)) = view {
            let before = health.insert(id.clone(), view.health);
            if before != Some(view.health) {
                info!(agent = %id, health = %view.health, "agent health");
            }
        }
    }
    Ok(())
}
