//! Jobs kept in the store — a spec written once, events each written once — and read
//! back by any manager replica: `jobs/<id>/spec.json`, `jobs/<id>/events/<n>.json`.
//!
//! An event's key is its index. Two replicas that append at once may both write the
//! same index; each reads the key back and, when the other's event stands, takes the
//! job up again from the stored events. Nothing depends on create-if-absent: what
//! keeps a step's command from running twice is its id, the same from every replica,
//! which the agent runs once.

pub mod cli;
pub mod engine;

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ferry_mailbox::store::Store;
use ferry_mailbox::time::now_ms;
use ferry_model::job::{EventKind, JobEvent, JobSpec, JobState, check_job_id};
use ferry_model::protocol::Document;

/// Folder of all jobs.
const JOBS: &str = "jobs/";

fn spec_key(id: &str) -> String {
    format!("{JOBS}{id}/spec.json")
}

fn events_prefix(id: &str) -> String {
    format!("{JOBS}{id}/events/")
}

fn event_key(id: &str, index: usize) -> String {
    format!("{}{index:06}.json", events_prefix(id))
}

/// A job as the store holds it.
#[derive(Debug, Clone)]
pub struct Job {
    /// What it was asked to do.
    pub spec: JobSpec,
    /// What happened, in order.
    pub events: Vec<JobEvent>,
    /// How many event files there are (unreadable ones included): the next index.
    pub next_index: usize,
    /// Event files that could not be read, named with the reason.
    pub problems: Vec<String>,
}

impl Job {
    /// The job's state, from its spec and events.
    pub fn state(&self) -> JobState {
        JobState::derive(&self.spec, &self.events)
    }
}

/// Writes a new job's spec.
pub async fn create(store: &Arc<dyn Store>, spec: &JobSpec) -> Result<()> {
    check_job_id(&spec.id).map_err(|e| anyhow::anyhow!("job {}: {e}", spec.id))?;
    store
        .put(&spec_key(&spec.id), spec.to_bytes().into())
        .await
        .with_context(|| format!("writing job {}", spec.id))
}

/// Reads a job's spec and events.
pub async fn load(store: &Arc<dyn Store>, id: &str) -> Result<Job> {
    let key = spec_key(id);
    let bytes = store
        .get(&key)
        .await
        .with_context(|| format!("reading job {id}"))?
        .with_context(|| format!("job {id}: no such job (`ferry jobs` lists them)"))?;
    let spec = JobSpec::parse(&bytes).with_context(|| format!("job {id}: {key}"))?;
    if spec.id != id {
        bail!(
            "job {id}: {key} holds job {}; it was copied or forged",
            spec.id
        );
    }
    let listing = store.list(&events_prefix(id)).await?;
    let mut events = Vec::new();
    let mut problems = Vec::new();
    for name in &listing.objects {
        let key = format!("{}{name}", events_prefix(id));
        let read = match store.get(&key).await? {
            Some(bytes) => JobEvent::parse(&bytes).map_err(|e| e.to_string()),
            None => Err("it vanished while being read".into()),
        };
        match read {
            Ok(e) if e.job_id == id => events.push(e),
            Ok(e) => problems.push(format!("{key}: an event of job {}", e.job_id)),
            Err(e) => problems.push(format!("{key}: {e}")),
        }
    }
    Ok(Job {
        spec,
        events,
        next_index: listing.objects.len(),
        problems,
    })
}

/// Appends an event to `job` (as loaded). Returns whether it stands: when another
/// replica wrote that index at the same time and its event is the one stored, ours
/// did not happen and the caller reloads the job.
pub async fn append(store: &Arc<dyn Store>, job: &Job, kind: EventKind) -> Result<bool> {
    let id = &job.spec.id;
    let event = JobEvent::new(id, now_ms(), kind);
    let key = event_key(id, job.next_index);
    let bytes = event.to_bytes();
    store
        .put(&key, bytes.clone().into())
        .await
        .with_context(|| format!("recording an event of job {id}"))?;
    let stored = store.get(&key).await?;
    Ok(stored.as_deref() == Some(&bytes[..]))
}

/// Every job's id, oldest first (ids are time-ordered UUIDs).
pub async fn ids(store: &Arc<dyn Store>) -> Result<Vec<String>> {
    let listing = store.list(JOBS).await.context("listing jobs")?;
    let mut ids: Vec<String> = listing
        .folders
        .iter()
        .map(|f| f.trim_end_matches('/').to_string())
        .filter(|f| check_job_id(f).is_ok())
        .collect();
    ids.sort();
    Ok(ids)
}

/// The job whose id is or starts with `id_or_prefix`.
pub async fn resolve(store: &Arc<dyn Store>, id_or_prefix: &str) -> Result<String> {
    let all = ids(store).await?;
    if all.iter().any(|i| i == id_or_prefix) {
        return Ok(id_or_prefix.to_string());
    }
    let found: Vec<&String> = all.iter().filter(|i| i.starts_with(id_or_prefix)).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("job {id_or_prefix}: no such job (`ferry jobs` lists them)"),
        many => bail!(
            "job {id_or_prefix}: {} jobs start so; give more of the id",
            many.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_mailbox::store::folder::FolderStore;
    use ferry_model::job::{JobKind, Step};
    use ferry_model::protocol::SCHEMA;

    fn spec(id: &str) -> JobSpec {
        JobSpec {
            schema: SCHEMA,
            id: id.into(),
            created_ms: 1,
            kind: JobKind::Capture {
                source: "a".repeat(52),
                image: "web".into(),
                capture: Default::default(),
            },
        }
    }

    fn sent(seq: u64) -> EventKind {
        EventKind::Sent {
            step: Step::Capture,
            attempt: 1,
            agent: "a".repeat(52),
            command_id: Step::Capture.command_id("j1", 1),
            seq,
        }
    }

    #[tokio::test]
    async fn events_append_in_order_and_two_writers_of_one_index_leave_one() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FolderStore::new(dir.path()).unwrap());
        create(&store, &spec("j1")).await.unwrap();
        create(&store, &spec("j2")).await.unwrap();
        assert_eq!(ids(&store).await.unwrap(), ["j1", "j2"]);
        assert_eq!(resolve(&store, "j1").await.unwrap(), "j1");
        let e = resolve(&store, "j").await.unwrap_err().to_string();
        assert!(e.contains("2 jobs"), "{e}");

        let job = load(&store, "j1").await.unwrap();
        assert!(append(&store, &job, sent(5)).await.unwrap());
        // A replica that loaded the job before that event writes the same index.
        assert!(append(&store, &job, sent(6)).await.unwrap());
        let job = load(&store, "j1").await.unwrap();
        assert_eq!(job.events.len(), 1, "one index, one event");
        assert!(matches!(job.events[0].kind, EventKind::Sent { seq: 6, .. }));
        assert!(append(&store, &job, sent(7)).await.unwrap());
        assert_eq!(load(&store, "j1").await.unwrap().events.len(), 2);
    }

    #[tokio::test]
    async fn a_bad_event_is_named_and_kept_out_and_a_missing_job_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(FolderStore::new(dir.path()).unwrap());
        create(&store, &spec("j1")).await.unwrap();
        store
            .put(&event_key("j1", 0), b"{not json".to_vec().into())
            .await
            .unwrap();
        let job = load(&store, "j1").await.unwrap();
        assert!(job.events.is_empty());
        assert_eq!(job.next_index, 1, "the bad file keeps its index");
        assert!(
            job.problems[0].contains("000000.json"),
            "{:?}",
            job.problems
        );
        let e = load(&store, "nope").await.unwrap_err().to_string();
        assert!(e.contains("no such job"), "{e}");
    }
}
