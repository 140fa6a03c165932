//! Carrying a job on: from its spec and events alone, do what is due now — send a
//! step's command, record an agent's answer, find the target's ramdisk agent — and
//! record it as an event. Every manager replica runs the same code on the same files.

use anyhow::{Context, Result};
use ferry_mailbox::health::Health;
use ferry_model::job::{
    EventKind, JobKind, JobState, JobStatus, Outcome, Step, StepState, StepStatus, TargetRef,
    capture_id,
};
use ferry_model::protocol::{Action, AgentKind, BootMethod, MessageBody};
use tracing::info;

use super::Job;
use crate::config::ManagerConfig;
use crate::deploy::Following;
use crate::fleet::Fleet;
use crate::images::Repo;

/// How long a direct migration's deploy waits for each filesystem of the capture it
/// follows (a failed capture tells it at once; this bounds a capture that hangs).
const FOLLOW_SECS: u64 = 6 * 3600;

/// A target brought into its ramdisk by its installed agent: the ramdisk reboots back
/// into the server's own system when its agent has not reached the store by then.
const BOOT_FALLBACK_SECS: u32 = 600;

/// How long after the boot-ramdisk command the target step gives up on the ramdisk:
/// making it (a few minutes at most) and the fallback.
const BOOT_DEADLINE_SECS: u64 = 1200;

/// How many events one call of [`advance`] records at most (a job has few steps; the
/// bound keeps a replica that keeps losing races from looping).
const MAX_EVENTS_PER_ADVANCE: usize = 16;

/// Does what is due on job `id` now, as often as something is due; returns the job as
/// it then stands.
pub async fn advance(config: &ManagerConfig, fleet: &Fleet, id: &str) -> Result<Job> {
    let job = carry_on(config, fleet, id).await?;
    tell_follower(config, &job).await;
    Ok(job)
}

/// A direct job whose capture will not finish — it failed, or the job was cancelled
/// while it ran — while its deploy, following that capture, still runs: marks the
/// capture stopped so the deploy ends with the reason. Marking is idempotent, so a
/// replica that died between recording the failure (or cancel) and marking it is made
/// good by the next one to carry the job.
pub(super) async fn tell_follower(config: &ManagerConfig, job: &Job) {
    if !job.spec.direct() {
        return;
    }
    let state = job.state();
    let (Some(capture), Some(deploy)) = (state.step(Step::Capture), state.step(Step::Deploy))
    else {
        return;
    };
    if !matches!(deploy.status, StepStatus::Running { .. }) {
        return;
    }
    let why = match &capture.status {
        StepStatus::Failed { error } => error.clone(),
        StepStatus::Running { .. } if state.status == JobStatus::Cancelled => {
            format!("job {} was cancelled", job.spec.id)
        }
        _ => return,
    };
    abandon(config, job, capture.attempt, &why).await;
}

/// The steps of [`advance`].
async fn carry_on(config: &ManagerConfig, fleet: &Fleet, id: &str) -> Result<Job> {
    let store = fleet.store();
    let mut job = super::load(store, id).await?;
    for _ in 0..MAX_EVENTS_PER_ADVANCE {
        let state = job.state();
        let mut due = None;
        for step in state.actionable(&job.spec) {
            if let Some(event) = work_on(config, fleet, &job, &state, step).await? {
                due = Some(event);
                break;
            }
        }
        let Some(event) = due else {
            return Ok(job);
        };
        info!(job = %id, event = ?event, "job event");
        super::append(store, &job, event).await?;
        job = super::load(store, id).await?;
    }
    Ok(job)
}

/// The event that one step has due now, if any.
async fn work_on(
    config: &ManagerConfig,
    fleet: &Fleet,
    job: &Job,
    state: &JobState,
    step: &StepState,
) -> Result<Option<EventKind>> {
    let (s, attempt) = (step.step, step.attempt);
    if let StepStatus::Running {
        agent, command_id, ..
    } = &step.status
    {
        if s == Step::Target {
            return entering(fleet, step, agent, command_id).await;
        }
        return Ok(answer(fleet, agent, command_id)
            .await?
            .map(|body| event_for(s, attempt, agent, body)));
    }
    let command_id = s.command_id(&job.spec.id, attempt);
    // A replica that sent the command and stopped before recording it: its answer
    // may already be in.
    let agent = match s {
        Step::Capture => job.spec.source().map(str::to_string),
        Step::Deploy => state.target_agent().map(str::to_string),
        Step::Target | Step::Discard => None,
    };
    if let Some(agent) = &agent
        && let Some(body) = answer(fleet, agent, &command_id).await?
    {
        return Ok(Some(event_for(s, attempt, agent, body)));
    }
    let sent = match s {
        Step::Target => return find_target(config, fleet, job, state, attempt).await,
        Step::Discard => return Ok(Some(discard(config, job, attempt).await)),
        Step::Capture => send_capture(config, fleet, job, attempt, &command_id).await,
        Step::Deploy => match send_deploy(config, fleet, job, state, &command_id)
            .await
            .transpose()
        {
            None => return Ok(None),
            Some(sent) => sent,
        },
    };
    Ok(Some(match sent {
        Ok((agent, seq)) => EventKind::Sent {
            step: s,
            attempt,
            agent,
            command_id,
            seq,
        },
        Err(e) => EventKind::Failed {
            step: s,
            attempt,
            error: format!("{e:#}"),
        },
    }))
}

/// The agent's answer to a command, if there is one yet.
async fn answer(fleet: &Fleet, agent: &str, command_id: &str) -> Result<Option<MessageBody>> {
    Ok(fleet.reply_now(agent, command_id).await?.map(|m| m.body))
}

/// The event an agent's answer makes.
fn event_for(step: Step, attempt: u32, agent: &str, body: MessageBody) -> EventKind {
    let outcome = match body {
        MessageBody::Captured {
            capture,
            filesystems,
            warnings,
            ..
        } if step == Step::Capture => Outcome::Captured {
            capture,
            filesystems,
            warnings,
        },
        MessageBody::Deployed {
            capture,
            steps,
            drivers_added,
            ..
        } if step == Step::Deploy => Outcome::Deployed {
            capture,
            steps,
            drivers_added,
        },
        other => {
            return EventKind::Failed {
                step,
                attempt,
                error: crate::images::failure(agent, other).to_string(),
            };
        }
    };
    EventKind::Done {
        step,
        attempt,
        outcome,
    }
}

/// The target's ramdisk agent, when it is online: by id, or the newest ramdisk agent
/// on the machine with the spec's MAC or SMBIOS UUID. A machine a provider is to make
/// is made first (by whichever replica has that provider).
async fn find_target(
    config: &ManagerConfig,
    fleet: &Fleet,
    job: &Job,
    state: &JobState,
    attempt: u32,
) -> Result<Option<EventKind>> {
    let Some(target) = job.spec.target() else {
        return Ok(None);
    };
    if let TargetRef::New(spec) = target
        && state.machine.is_none()
    {
        // A replica without the provider leaves the machine to one that has it.
        if !config.providers.contains_key(&spec.provider) {
            return Ok(None);
        }
        let made = async {
            crate::providers::open(config, &spec.provider)?
                .ensure(&job.spec.id, spec)
                .await
        };
        return Ok(Some(match made.await {
            Ok(machine) => EventKind::Provisioned { machine },
            Err(e) => EventKind::Failed {
                step: Step::Target,
                attempt,
                error: format!("provider {}: {e:#}", spec.provider),
            },
        }));
    }
    let candidates = match target {
        TargetRef::Agent(prefix) => match fleet.resolve(prefix).await {
            Ok(id) => {
                let view = fleet.view(&id).await?;
                // A server running its installed agent is brought into its ramdisk
                // first.
                if view.kind() == Some(AgentKind::Installed) && view.health == Health::Online {
                    return Ok(Some(boot_target(config, fleet, job, attempt, &id).await));
                }
                vec![view]
            }
            Err(_) => Vec::new(),
        },
        _ => fleet.scan().await?,
    };
    // A made machine's agent is younger than the machine (a minute's slack for
    // clocks): an older ramdisk agent with one of its MACs is another machine's.
    let since = match target {
        TargetRef::New(_) => state
            .step(Step::Target)
            .and_then(|s| s.started_ms)
            .map(|t| t.saturating_sub(60_000)),
        _ => None,
    };
    // Found once ready: online, with its survey (the plan's input) published — a
    // direct migration's deploy is sent at once.
    let found = candidates
        .into_iter()
        .filter(|v| v.health == Health::Online && v.status.is_some())
        .filter_map(|v| v.identity)
        .filter(|i| i.kind == AgentKind::Ramdisk && target.matches(&i.agent_id, &i.fingerprint))
        .filter(|i| since.is_none_or(|t| i.created_ms >= t))
        .max_by_key(|i| i.created_ms);
    Ok(found.map(|i| EventKind::Done {
        step: Step::Target,
        attempt,
        outcome: Outcome::Matched {
            agent: i.agent_id,
            entered: None,
        },
    }))
}

/// Has the installed agent `id` bring its server into the Ferry ramdisk (by the job's
/// boot method, the safest that works there unless told): the target step's command.
async fn boot_target(
    config: &ManagerConfig,
    fleet: &Fleet,
    job: &Job,
    attempt: u32,
    id: &str,
) -> EventKind {
    let command_id = Step::Target.command_id(&job.spec.id, attempt);
    let sent = async {
        let dir = crate::bootramdisk::base_dir(config)?;
        let base = crate::bootramdisk::publish(fleet.store().as_ref(), &dir).await?;
        let method = match &job.spec.kind {
            JobKind::Deploy { deploy, .. } | JobKind::Migrate { deploy, .. } => deploy.boot_method,
            JobKind::Capture { .. } => BootMethod::Auto,
        };
        let action = Action::BootRamdisk {
            method,
            base,
            fallback_secs: BOOT_FALLBACK_SECS,
            check: false,
        };
        fleet
            .send_prepared(id, &command_id, action, Default::default())
            .await
    };
    match sent.await {
        Ok(cmd) => EventKind::Sent {
            step: Step::Target,
            attempt,
            agent: id.to_string(),
            command_id,
            seq: cmd.seq,
        },
        Err(e) => EventKind::Failed {
            step: Step::Target,
            attempt,
            error: format!("bringing agent {id} into the Ferry ramdisk: {e:#}"),
        },
    }
}

/// A target on its way into its ramdisk: matched once the same agent runs the ramdisk
/// the step's command made; failed when the agent could not make it, the ramdisk
/// reported the attempt failed, or it has not come within the deadline (the server
/// then comes back to its own system by itself).
async fn entering(
    fleet: &Fleet,
    step: &StepState,
    agent: &str,
    command_id: &str,
) -> Result<Option<EventKind>> {
    let failed = |error: String| {
        Some(EventKind::Failed {
            step: Step::Target,
            attempt: step.attempt,
            error,
        })
    };
    let reply = fleet.reply_now(agent, command_id).await?;
    let prepared_ms = reply.as_ref().map(|m| m.at_ms);
    let made = match reply.map(|m| m.body) {
        Some(MessageBody::RamdiskPrepared { method, why, .. }) => Some((method, why)),
        Some(other) => return Ok(failed(crate::images::failure(agent, other).to_string())),
        None => None,
    };
    let sent_ms = step.started_ms.unwrap_or(0);
    // A minute's slack for the clocks of agent and manager.
    let since = sent_ms.saturating_sub(60_000);
    let view = fleet.view(agent).await?;
    let handover = prepared_ms.map(|at| crate::bootramdisk::Handover::of(&view, at));
    match view
        .status
        .as_ref()
        .and_then(|s| crate::bootramdisk::entered(s, command_id, since, handover.as_ref()))
    {
        Some(Ok(network)) => {
            let how = made.map_or_else(
                || "entered its ramdisk".to_string(),
                |(method, why)| format!("entered its ramdisk by {method} ({why})"),
            );
            return Ok(Some(EventKind::Done {
                step: Step::Target,
                attempt: step.attempt,
                outcome: Outcome::Matched {
                    agent: agent.to_string(),
                    entered: Some(format!("{how}; network: {network}")),
                },
            }));
        }
        Some(Err(why)) => return Ok(failed(format!("agent {agent}: {why}"))),
        None => {}
    }
    if ferry_mailbox::time::now_ms() > sent_ms + BOOT_DEADLINE_SECS * 1000 {
        let method = made.map_or(BootMethod::Auto, |(m, _)| m);
        return Ok(failed(format!(
            "agent {agent}: {}",
            crate::bootramdisk::not_back(BOOT_DEADLINE_SECS, method, BOOT_FALLBACK_SECS)
        )));
    }
    Ok(None)
}

/// Sends the capture command; (agent, seq). A direct migration's capture gets a fixed
/// id and writes its progress, for the deploy that follows it.
async fn send_capture(
    config: &ManagerConfig,
    fleet: &Fleet,
    job: &Job,
    attempt: u32,
    command_id: &str,
) -> Result<(String, u64)> {
    let (source, image, settings) = match &job.spec.kind {
        JobKind::Capture {
            source,
            image,
            capture,
        }
        | JobKind::Migrate {
            source,
            image,
            capture,
            ..
        } => (source, image, capture),
        JobKind::Deploy { .. } => anyhow::bail!("a deploy job captures nothing"),
    };
    let direct = job.spec.direct();
    let repo = Repo::of_job(config, &job.spec)?;
    repo.ensure().await?;
    let cmd = repo
        .send(fleet, source, command_id, |library| Action::Capture {
            image: image.clone(),
            library,
            paths: settings.paths.clone(),
            excludes: settings.excludes.clone(),
            live: settings.live,
            freeze: settings.freeze,
            raw: Vec::new(),
            capture: direct.then(|| capture_id(&job.spec.id, attempt)),
            progressive: direct,
        })
        .await?;
    Ok((source.clone(), cmd.seq))
}

/// Makes and checks the plan for the target's survey, then sends the deploy; (agent,
/// seq). A plan that cannot be carried out fails the step, naming every problem. A
/// direct migration's deploy follows the capture: it is sent once the capture has
/// written its layout (`None` until then).
async fn send_deploy(
    config: &ManagerConfig,
    fleet: &Fleet,
    job: &Job,
    state: &JobState,
    command_id: &str,
) -> Result<Option<(String, u64)>> {
    let following = state.capture_to_restore(&job.spec);
    let (image, capture, settings) = match &job.spec.kind {
        JobKind::Deploy {
            image,
            capture,
            deploy,
            ..
        } => (image, capture.as_deref(), deploy),
        JobKind::Migrate { image, deploy, .. } => (image, following.as_deref(), deploy),
        JobKind::Capture { .. } => anyhow::bail!("a capture job deploys nothing"),
    };
    let target = state
        .target_agent()
        .context("the target's agent is not known yet")?
        .to_string();
    let repo = Repo::of_job(config, &job.spec)?;
    let following = match capture {
        Some(at) if job.spec.direct() => {
            let (img, at) = (image.clone(), at.to_string());
            let Some(manifest) = repo.with(move |lib| lib.manifest_so_far(&img, &at)).await? else {
                return Ok(None);
            };
            Some(Following {
                manifest,
                secs: FOLLOW_SECS,
            })
        }
        _ => None,
    };
    let plan = crate::deploy::checked_plan(
        &repo,
        fleet,
        image,
        capture,
        settings.plan.as_deref().cloned(),
        &target,
        settings.keep_on_failure,
        following,
    )
    .await?;
    let reboot = settings.reboot;
    let cmd = repo
        .send(fleet, &target, command_id, |library| Action::Deploy {
            library,
            plan: Box::new(plan),
            reboot,
        })
        .await?;
    Ok(Some((target, cmd.seq)))
}

/// Tells a direct migration's deploy, which may be following the capture, that
/// capture `attempt` failed; a failure to do so is logged (the deploy then waits out
/// its own deadline).
async fn abandon(config: &ManagerConfig, job: &Job, attempt: u32, why: &str) {
    let id = capture_id(&job.spec.id, attempt);
    let (image, why) = (job.spec.image().to_string(), why.to_string());
    let marked = async {
        Repo::direct(config, &job.spec.id)?
            .with(move |lib| ferry_image::abandon(&lib, &image, &id, &why))
            .await
    };
    if let Err(e) = marked.await {
        tracing::warn!(job = %job.spec.id, "marking the failed capture for its deploy: {e:#}");
    }
}

/// Deletes a direct migration's temporary repository: the step's outcome, or its
/// failure (run again by `ferry job retry`).
async fn discard(config: &ManagerConfig, job: &Job, attempt: u32) -> EventKind {
    let step = Step::Discard;
    let done = async { Repo::direct(config, &job.spec.id)?.discard().await };
    match done.await {
        Ok((objects, bytes)) => EventKind::Done {
            step,
            attempt,
            outcome: Outcome::Discarded { objects, bytes },
        },
        Err(e) => EventKind::Failed {
            step,
            attempt,
            error: format!("{e:#}"),
        },
    }
}
