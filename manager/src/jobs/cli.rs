//! `ferry migrate`, `ferry jobs` and `ferry job show|watch|cancel|retry`: jobs made,
//! listed, and carried on while a person (progress bars) or a program (`--json`)
//! watches them.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_image::progress::size;
use ferry_mailbox::time::now_ms;
use ferry_model::job::{
    EventKind, JobKind, JobSpec, JobState, JobStatus, Outcome, Step, StepStatus, TargetRef,
};
use ferry_model::machine::MachineSpec;
use ferry_model::protocol::{Action, MessageBody, SCHEMA};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Job, engine};
use crate::config::ManagerConfig;
use crate::fleet::Fleet;
use crate::images::Repo;

/// Options of `ferry migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateOptions {
    /// The target: an agent's id (or prefix) — a ramdisk agent, or an installed one
    /// whose server is first brought into its ramdisk (boot-ramdisk); the machine
    /// that will boot Ferry's ramdisk, as mac=AA:BB:CC:DD:EE:FF or uuid=SMBIOS-UUID;
    /// or a machine a provider makes, as new=FILE (a machine spec in YAML: provider,
    /// cpus, memory_mib, firmware, boot, disks, nics).
    #[arg(long = "to")]
    pub to: String,
    /// The image to capture into (default: the source's host name).
    #[arg(long)]
    pub image: Option<String>,
    /// Which filesystems, and how they are read.
    #[command(flatten)]
    pub how: crate::images::CaptureHow,
    /// How the target is deployed.
    #[command(flatten)]
    pub deploy: crate::deploy::DeployHow,
    /// Capture into a temporary repository of this job, not the library; it is
    /// deleted once the target is deployed, and the image is not kept.
    #[arg(long)]
    pub direct: bool,
    /// How the job is followed.
    #[command(flatten)]
    pub watch: WatchOptions,
}

/// How a job is followed.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchOptions {
    /// Make a job, print its id and return: `ferry serve` (any replica) carries it
    /// on, `ferry job watch` follows it.
    #[arg(long)]
    pub detach: bool,
    /// Print the final state as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Seconds to follow the job before giving up on watching (the job goes on).
    #[arg(long, default_value_t = 86400.0)]
    pub timeout: f64,
}

/// `ferry migrate SOURCE --to TARGET`: makes a migrate job, then carries it on and
/// shows its progress until it ends (unless `--detach`).
pub async fn migrate(config: &ManagerConfig, source: &str, opts: &MigrateOptions) -> Result<()> {
    let target = parse_target(config, &opts.to)?;
    let fleet = crate::cli::fleet(config)?;
    let source = fleet.resolve(source).await?;
    let view = fleet.view(&source).await?;
    let identity = view
        .identity
        .with_context(|| format!("agent {source} has no identity in its mailbox yet"))?;
    let image = opts
        .image
        .clone()
        .unwrap_or_else(|| identity.hostname.clone());
    ferry_model::image::check_image_name(&image)
        .map_err(|e| anyhow::anyhow!("image {image:?}: {e} (name one with --image)"))?;
    let target = resolved(&fleet, target).await?;
    if target == TargetRef::Agent(source.clone()) {
        bail!(
            "agent {source} is both the source and the target; to put an image back onto its own server, capture it, then `ferry deploy IMAGE --to {}`",
            &source[..12.min(source.len())]
        );
    }
    let id = make(
        &fleet,
        JobKind::Migrate {
            source,
            image,
            target,
            capture: opts.how.settings(),
            deploy: opts.deploy.settings()?,
            direct: opts.direct,
        },
    )
    .await?;
    detach_or_follow(config, &fleet, &id, &opts.watch).await
}

/// `ferry deploy IMAGE --to TARGET` as a job: for `--detach`, and for a target that
/// is no ramdisk agent yet (an installed agent, a MAC, an SMBIOS UUID, a machine to
/// make).
pub async fn deploy_job(
    config: &ManagerConfig,
    image: &str,
    opts: &crate::deploy::DeployOptions,
) -> Result<()> {
    let target = parse_target(config, &opts.to)?;
    let fleet = crate::cli::fleet(config)?;
    let target = resolved(&fleet, target).await?;
    let deploy = opts.how.settings()?;
    // The image (and the capture asked for) must be there before anything moves.
    let (name, at) = (image.to_string(), opts.capture.clone());
    crate::images::Repo::library(config)?
        .with(move |lib| lib.manifest(&name, at.as_deref()))
        .await?;
    let id = make(
        &fleet,
        JobKind::Deploy {
            image: image.to_string(),
            capture: opts.capture.clone(),
            target,
            deploy,
        },
    )
    .await?;
    detach_or_follow(config, &fleet, &id, &opts.watch).await
}

/// An agent target by its whole id; others as given.
async fn resolved(fleet: &Fleet, target: TargetRef) -> Result<TargetRef> {
    Ok(match target {
        TargetRef::Agent(prefix) => TargetRef::Agent(fleet.resolve(&prefix).await?),
        other => other,
    })
}

/// Prints the new job's id and returns (`--detach`), or follows it to its end.
async fn detach_or_follow(
    config: &ManagerConfig,
    fleet: &Fleet,
    id: &str,
    watch: &WatchOptions,
) -> Result<()> {
    if watch.detach {
        println!("{id}");
        return Ok(());
    }
    follow(config, fleet, id, watch).await
}

/// Reads `--to`: what [`TargetRef::parse`] reads, or `new=FILE` with a machine spec
/// for one of this manager's providers.
pub fn parse_target(config: &ManagerConfig, text: &str) -> Result<TargetRef> {
    let Some(file) = text.strip_prefix("new=") else {
        return TargetRef::parse(text).map_err(|e| anyhow::anyhow!(e));
    };
    let yaml = std::fs::read_to_string(file)
        .with_context(|| format!("reading machine spec {file} (given as --to new={file})"))?;
    let spec: MachineSpec = serde_saphyr::from_str(&yaml)
        .map_err(|e| anyhow::anyhow!("machine spec {file} is not valid: {e}"))?;
    let problems = spec.problems();
    if !problems.is_empty() {
        bail!("machine spec {file}: {}", problems.join("; "));
    }
    crate::providers::open(config, &spec.provider)
        .with_context(|| format!("machine spec {file}"))?;
    Ok(TargetRef::New(Box::new(spec)))
}

/// `ferry capture AGENT --image NAME --detach`: makes a capture job; its id.
pub async fn capture_job(
    config: &ManagerConfig,
    source: &str,
    opts: &crate::images::CaptureOptions,
) -> Result<String> {
    if !opts.raw.is_empty() {
        bail!(
            "--raw devices are captured by `ferry capture` without --detach (jobs take filesystems)"
        );
    }
    let fleet = crate::cli::fleet(config)?;
    let source = fleet.resolve(source).await?;
    make(
        &fleet,
        JobKind::Capture {
            source,
            image: opts.image.clone(),
            capture: opts.how.settings(),
        },
    )
    .await
}

/// Writes a new job of `kind` into the store; its id.
async fn make(fleet: &Fleet, kind: JobKind) -> Result<String> {
    let spec = JobSpec {
        schema: SCHEMA,
        id: uuid::Uuid::now_v7().to_string(),
        created_ms: now_ms(),
        kind,
    };
    super::create(fleet.store(), &spec).await?;
    eprintln!(
        "job {} ({} of {})",
        spec.id,
        spec.kind_name(),
        describe(&spec)
    );
    Ok(spec.id)
}

/// What a job moves, in a few words.
fn describe(spec: &JobSpec) -> String {
    let short = |id: &str| id[..id.len().min(12)].to_string();
    match &spec.kind {
        JobKind::Capture { source, image, .. } => {
            format!("agent {} into image {image}", short(source))
        }
        JobKind::Deploy { image, target, .. } => format!("image {image} onto {target}"),
        JobKind::Migrate {
            source,
            image,
            target,
            direct,
            ..
        } => format!(
            "agent {} onto {target} through {} {image}",
            short(source),
            if *direct {
                "a temporary repository, as image"
            } else {
                "image"
            }
        ),
    }
}

/// `ferry job watch ID`: carries the job on and shows it until it ends.
pub async fn watch(config: &ManagerConfig, id: &str, opts: &WatchOptions) -> Result<()> {
    let fleet = crate::cli::fleet(config)?;
    let id = super::resolve(fleet.store(), id).await?;
    follow(config, &fleet, &id, opts).await
}

/// One progress bar per step.
struct Bars {
    multi: MultiProgress,
    bars: Vec<(Step, ProgressBar)>,
    terminal: bool,
}

impl Bars {
    fn new(steps: &[Step]) -> Bars {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let bars = steps
            .iter()
            .map(|&s| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_style(waiting_style());
                bar.set_prefix(s.name());
                (s, bar)
            })
            .collect();
        Bars {
            multi,
            bars,
            terminal,
        }
    }

    /// A line above the bars (or on stderr, without a terminal).
    fn say(&self, line: String) {
        if self.terminal {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}

fn waiting_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>8} {spinner} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>8} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Carries the job on (this process is a manager replica like any other) and shows
/// it until it ends or `opts.timeout` passes.
async fn follow(
    config: &ManagerConfig,
    fleet: &Fleet,
    id: &str,
    opts: &WatchOptions,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(opts.timeout);
    let mut job = super::load(fleet.store(), id).await?;
    let bars = Bars::new(job.spec.steps());
    let mut shown = 0;
    let mut store_trouble = false;
    loop {
        match engine::advance(config, fleet, id).await {
            Ok(j) => {
                if store_trouble {
                    bars.say("the store answers again".into());
                    store_trouble = false;
                }
                job = j;
            }
            Err(e) if !store_trouble => {
                bars.say(format!("cannot carry job {id} on now, retrying: {e:#}"));
                store_trouble = true;
            }
            Err(_) => {}
        }
        for event in &job.events[shown.min(job.events.len())..] {
            bars.say(event_line(&job, event));
        }
        shown = job.events.len();
        let state = job.state();
        draw(fleet, &job, &state, &bars).await;
        if state.status != JobStatus::Running {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "job {id} is still running after {:.0} s; `ferry job watch {}` follows it again",
                opts.timeout,
                &id[..13.min(id.len())]
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for (_, bar) in &bars.bars {
        if !bar.is_finished() {
            bar.abandon();
        }
    }
    let state = job.state();
    if opts.json {
        println!("{}", show_json(&job, &state));
    } else {
        print!("{}", summary(&job, &state));
    }
    match state.status {
        JobStatus::Succeeded => Ok(()),
        JobStatus::Cancelled => bail!("job {id} was cancelled"),
        _ => {
            let why: Vec<String> = state
                .steps
                .iter()
                .filter_map(|s| match &s.status {
                    StepStatus::Failed { error } => Some(format!("{}: {error}", s.step)),
                    _ => None,
                })
                .collect();
            bail!(
                "job {id} failed at {}; `ferry job retry {}` runs the failed step again",
                why.join("; "),
                &id[..13.min(id.len())]
            )
        }
    }
}

/// Sets each bar from the step's state and, for a running step, its agent's status.
async fn draw(fleet: &Fleet, job: &Job, state: &JobState, bars: &Bars) {
    for (step, bar) in &bars.bars {
        let Some(s) = state.step(*step) else { continue };
        if bar.is_finished() {
            continue;
        }
        match &s.status {
            StepStatus::Pending => {
                bar.set_message(match step {
                    Step::Target => {
                        format!("waiting for {} to boot Ferry's ramdisk", target_of(job))
                    }
                    _ => "waiting".into(),
                });
                bar.tick();
            }
            StepStatus::Running { agent, .. } => {
                let status = fleet.view(agent).await.ok().and_then(|v| v.status);
                let (phase, progress) = status
                    .map(|st| {
                        (
                            format!("{} {}", st.phase, st.step.unwrap_or_default()),
                            st.progress,
                        )
                    })
                    .unwrap_or_default();
                match progress.filter(|p| p.total > 0) {
                    Some(p) => {
                        bar.set_style(bytes_style());
                        bar.set_length(p.total);
                        bar.set_position(p.done.min(p.total));
                    }
                    None => {
                        bar.set_style(waiting_style());
                        bar.tick();
                    }
                }
                bar.set_message(format!(
                    "{} {}",
                    &agent[..12.min(agent.len())],
                    phase.trim()
                ));
            }
            StepStatus::Done { outcome } => {
                bar.set_style(waiting_style());
                bar.finish_with_message(format!("done {}", outcome_words(outcome)));
            }
            StepStatus::Failed { error } => {
                bar.set_style(waiting_style());
                bar.abandon_with_message(format!("failed: {error}"));
            }
        }
    }
}

fn target_of(job: &Job) -> String {
    match &job.spec.kind {
        JobKind::Deploy { target, .. } | JobKind::Migrate { target, .. } => target.to_string(),
        JobKind::Capture { .. } => "-".into(),
    }
}

fn outcome_words(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Captured {
            capture,
            filesystems,
            ..
        } => format!(
            "capture {capture}: {} in {} filesystems",
            size(filesystems.iter().map(|f| f.bytes).sum()),
            filesystems.len()
        ),
        Outcome::Matched { agent, .. } => format!("agent {}", &agent[..12.min(agent.len())]),
        Outcome::Deployed { capture, .. } => format!("capture {capture}"),
        Outcome::Discarded { objects, bytes } => {
            format!(
                "temporary repository deleted: {objects} objects, {}",
                size(*bytes)
            )
        }
    }
}

fn secs(ms: u64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

/// One event as a line, timed from the job's start.
fn event_line(job: &Job, event: &ferry_model::job::JobEvent) -> String {
    let at = secs(event.at_ms.saturating_sub(job.spec.created_ms));
    let what = match &event.kind {
        EventKind::Sent {
            step,
            attempt,
            agent,
            ..
        } => format!(
            "{step}: sent to agent {} (attempt {attempt})",
            &agent[..12.min(agent.len())]
        ),
        EventKind::Done { step, outcome, .. } => format!("{step}: {}", outcome_words(outcome)),
        EventKind::Failed { step, error, .. } => format!("{step}: failed: {error}"),
        EventKind::Retried { step } => format!("{step}: retried"),
        EventKind::Cancelled { by } => format!("cancelled by {by}"),
        EventKind::Provisioned { machine } => format!(
            "target: machine {} {} by provider {} (NIC {}), booting the ramdisk",
            machine.name,
            if machine.created {
                "made"
            } else {
                "found made"
            },
            machine.provider,
            machine.macs.join(", ")
        ),
    };
    format!("[{at:>8}] {what}")
}

/// The final summary: what moved, how long each step took, what changed on the target.
pub fn summary(job: &Job, state: &JobState) -> String {
    let mut out = format!(
        "job {} ({}) {}: {}\n",
        job.spec.id,
        job.spec.kind_name(),
        state.status,
        describe(&job.spec)
    );
    if let Some(end) = state.ended_ms {
        out.push_str(&format!(
            "  took {}\n",
            secs(end.saturating_sub(job.spec.created_ms))
        ));
    }
    for s in &state.steps {
        let took = match (s.started_ms, s.ended_ms) {
            (Some(a), Some(b)) => secs(b.saturating_sub(a)),
            (None, Some(b)) => format!("after {}", secs(b.saturating_sub(job.spec.created_ms))),
            _ => "-".into(),
        };
        let attempt = if s.attempt > 1 {
            format!(" (attempt {})", s.attempt)
        } else {
            String::new()
        };
        let line = match &s.status {
            StepStatus::Pending => "pending".to_string(),
            StepStatus::Running { agent, .. } => {
                format!("running on agent {}", &agent[..12.min(agent.len())])
            }
            StepStatus::Failed { error } => format!("failed: {error}"),
            StepStatus::Done { outcome } => outcome_words(outcome),
        };
        out.push_str(&format!("  {:<8} {:>9}  {line}{attempt}\n", s.step, took));
        if let StepStatus::Done { outcome } = &s.status {
            match outcome {
                Outcome::Captured {
                    filesystems,
                    warnings,
                    ..
                } => {
                    for f in filesystems {
                        out.push_str(&format!(
                            "           {:<16} {:>10} in {} files, {} new, {:?}\n",
                            f.path,
                            size(f.bytes),
                            f.files,
                            size(f.added_bytes),
                            f.consistency
                        ));
                    }
                    for w in warnings {
                        out.push_str(&format!("           warning: {w}\n"));
                    }
                }
                Outcome::Deployed {
                    steps,
                    drivers_added,
                    ..
                } => {
                    let times: Vec<String> = steps
                        .iter()
                        .map(|t| format!("{} {}", t.step, secs(t.millis)))
                        .collect();
                    out.push_str(&format!("           {}\n", times.join(", ")));
                    if !drivers_added.is_empty() {
                        out.push_str(&format!(
                            "           drivers added to the migrated kernel: {}\n",
                            drivers_added.join(", ")
                        ));
                    }
                    let reboot = match &job.spec.kind {
                        JobKind::Deploy { deploy, .. } | JobKind::Migrate { deploy, .. } => {
                            deploy.reboot
                        }
                        JobKind::Capture { .. } => false,
                    };
                    if reboot {
                        out.push_str("           the target reboots into the deployed system\n");
                    }
                }
                Outcome::Discarded { .. } => {}
                Outcome::Matched { entered, .. } => {
                    if let Some(e) = entered {
                        out.push_str(&format!("           {e}\n"));
                    }
                    if let Some(m) = &state.machine {
                        out.push_str(&format!(
                            "           on machine {} that provider {} {}{}\n",
                            m.name,
                            m.provider,
                            if m.created { "made" } else { "had made" },
                            m.console
                                .as_deref()
                                .map(|c| format!(" (console {c})"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    if job.spec.direct() && state.status == JobStatus::Failed {
        out.push_str(&format!(
            "  its temporary repository is kept for `ferry job retry {0}`; `ferry job cancel {0}` deletes it\n",
            job.spec.id
        ));
    }
    for p in job.problems.iter().chain(&state.ignored) {
        out.push_str(&format!("  ! {p}\n"));
    }
    out
}

fn show_json(job: &Job, state: &JobState) -> serde_json::Value {
    serde_json::json!({
        "id": job.spec.id,
        "spec": job.spec,
        "status": state.status,
        "steps": state.steps,
        "ended_ms": state.ended_ms,
        "machine": state.machine,
        "events": job.events,
        "problems": job.problems.iter().chain(&state.ignored).collect::<Vec<_>>(),
    })
}

/// `ferry jobs`.
pub async fn list(config: &ManagerConfig, json: bool) -> Result<()> {
    let fleet = crate::cli::fleet(config)?;
    let mut jobs = Vec::new();
    for id in super::ids(fleet.store()).await? {
        match super::load(fleet.store(), &id).await {
            Ok(job) => jobs.push(job),
            Err(e) => eprintln!("ferry: {e:#}"),
        }
    }
    if json {
        let all: Vec<_> = jobs.iter().map(|j| show_json(j, &j.state())).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(());
    }
    println!(
        "{:<14} {:<8} {:<16} {:<10} {:<30} {:>9}",
        "JOB", "KIND", "IMAGE", "STATUS", "STEPS", "AGE"
    );
    for job in &jobs {
        let state = job.state();
        let steps: Vec<String> = state
            .steps
            .iter()
            .map(|s| {
                let mark = match s.status {
                    StepStatus::Pending => "·",
                    StepStatus::Running { .. } => "…",
                    StepStatus::Done { .. } => "✓",
                    StepStatus::Failed { .. } => "✗",
                };
                format!("{}{mark}", s.step)
            })
            .collect();
        println!(
            "{:<14} {:<8} {:<16} {:<10} {:<30} {:>9}",
            &job.spec.id[..13.min(job.spec.id.len())],
            job.spec.kind_name(),
            job.spec.image(),
            state.status.to_string(),
            steps.join(" "),
            secs(now_ms().saturating_sub(job.spec.created_ms))
        );
    }
    Ok(())
}

/// `ferry job show ID`.
pub async fn show(config: &ManagerConfig, id: &str, json: bool) -> Result<()> {
    let fleet = crate::cli::fleet(config)?;
    let id = super::resolve(fleet.store(), id).await?;
    let job = super::load(fleet.store(), &id).await?;
    let state = job.state();
    if json {
        println!("{}", show_json(&job, &state));
    } else {
        print!("{}", summary(&job, &state));
    }
    Ok(())
}

fn who() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// `ferry job cancel ID`: no further command is sent; a step already with an agent
/// runs to its end there (agents cannot stop a command midway yet). A direct
/// migration's temporary repository is deleted once no agent works in it any more;
/// cancelling again (also a failed direct job) deletes what is left.
pub async fn cancel(config: &ManagerConfig, id: &str) -> Result<()> {
    let fleet = crate::cli::fleet(config)?;
    let id = super::resolve(fleet.store(), id).await?;
    let job = super::load(fleet.store(), &id).await?;
    let state = job.state();
    let direct = job.spec.direct();
    match state.status {
        JobStatus::Running => {
            super::append(fleet.store(), &job, EventKind::Cancelled { by: who() }).await?;
            println!("job {id} cancelled");
        }
        JobStatus::Failed | JobStatus::Cancelled if direct => {
            if state.status == JobStatus::Failed {
                super::append(fleet.store(), &job, EventKind::Cancelled { by: who() }).await?;
            }
            println!("job {id} is cancelled");
        }
        status => bail!("job {id} has already {status}"),
    }
    if state.status == JobStatus::Running {
        stop_running(&fleet, &state).await?;
    }
    if direct {
        // Deleted only once the cancel has stuck and no agent works in it any more.
        let job = super::load(fleet.store(), &id).await?;
        let state = job.state();
        if state.status != JobStatus::Cancelled {
            bail!(
                "job {id}: the cancel did not stick (another manager wrote at the same time); run `ferry job cancel {id}` again"
            );
        }
        // A deploy following the capture stops at its next filesystem.
        super::engine::tell_follower(config, &job).await;
        let repo = Repo::direct(config, &id)?;
        let mut busy = Vec::new();
        for s in &state.steps {
            if let StepStatus::Running {
                agent, command_id, ..
            } = &s.status
                && fleet.reply_now(agent, command_id).await?.is_none()
            {
                busy.push(s.step.to_string());
            }
        }
        if !busy.is_empty() {
            println!(
                "  its temporary repository {} is kept while its agent still runs {}; run `ferry job cancel {id}` again once that has ended",
                repo.url(),
                busy.join(", ")
            );
            return Ok(());
        }
        let (objects, bytes) = repo.discard().await.with_context(|| {
            format!(
                "job {id}: deleting its temporary repository {}; run `ferry job cancel {id}` again",
                repo.url()
            )
        })?;
        println!(
            "  its temporary repository is deleted: {objects} objects, {}",
            size(bytes)
        );
    }
    Ok(())
}

/// How long `ferry job cancel` waits for the agents to stop the steps they run.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Asks the agent of every step still running to stop it (a cancel command under
/// the fixed id `<command>-cancel`, so a second `job cancel` sends nothing new), and
/// waits a while for each to answer.
async fn stop_running(fleet: &Fleet, state: &JobState) -> Result<()> {
    let mut asked = Vec::new();
    for s in &state.steps {
        let StepStatus::Running {
            agent, command_id, ..
        } = &s.status
        else {
            continue;
        };
        if fleet.reply_now(agent, command_id).await?.is_some() {
            continue;
        }
        let action = Action::Cancel {
            command: command_id.clone(),
        };
        let cancel = format!("{command_id}-cancel");
        match fleet
            .send_prepared(agent, &cancel, action, Default::default())
            .await
        {
            Ok(_) => {
                println!(
                    "  asked agent {} to stop its {} step",
                    &agent[..12.min(agent.len())],
                    s.step
                );
                asked.push((s.step, agent.clone(), command_id.clone()));
            }
            Err(e) => println!(
                "  could not ask agent {agent} to stop its {} step ({e:#}); it runs to its end",
                s.step
            ),
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    while !asked.is_empty() && tokio::time::Instant::now() < deadline {
        let mut left = Vec::new();
        for (step, agent, command_id) in asked {
            match fleet.reply_now(&agent, &command_id).await?.map(|m| m.body) {
                Some(MessageBody::Failed { code, .. }) if code == "cancelled" => {
                    println!("  the {step} step stopped");
                }
                Some(_) => println!("  the {step} step had ended before it could be stopped"),
                None => left.push((step, agent, command_id)),
            }
        }
        asked = left;
        if !asked.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for (step, agent, _) in &asked {
        println!(
            "  agent {} has not stopped its {step} step yet (offline, or between checks); it stops when it sees the cancel",
            &agent[..12.min(agent.len())]
        );
    }
    Ok(())
}

/// `ferry job retry ID`: runs the failed step again, under a new command id.
pub async fn retry(config: &ManagerConfig, id: &str, opts: &WatchOptions) -> Result<()> {
    let fleet = crate::cli::fleet(config)?;
    let id = super::resolve(fleet.store(), id).await?;
    let job = super::load(fleet.store(), &id).await?;
    let state = job.state();
    if state.status != JobStatus::Failed {
        bail!("job {id} is {}; only a failed job is retried", state.status);
    }
    let mut job = job;
    // One event per load, so each lands on its own index.
    while let Some(s) = job
        .state()
        .steps
        .into_iter()
        .find(|s| matches!(s.status, StepStatus::Failed { .. }))
    {
        super::append(fleet.store(), &job, EventKind::Retried { step: s.step }).await?;
        eprintln!(
            "job {id}: {} runs again (attempt {})",
            s.step,
            s.attempt + 1
        );
        job = super::load(fleet.store(), &id).await?;
    }
    if opts.detach {
        return Ok(());
    }
    follow(config, &fleet, &id, opts).await
}
