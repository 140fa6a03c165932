//! Jobs: what a manager was asked to do (a spec, written once) and what happened
//! (events, each written once); the job's state and its next steps follow from those
//! alone, so any manager replica can carry any job on.

use serde::{Deserialize, Serialize};

use crate::deploy::{DeployPlan, StepTime};
use crate::image::FsImage;
use crate::machine::{Machine, MachineSpec, parse_mac};
use crate::protocol::{Document, DocumentError, SCHEMA, check_object_id};

/// Longest job id: a step's command id (`<job>-<step>-<attempt>`) must stay within
/// the 64 characters of an object id.
pub const MAX_JOB_ID_LEN: usize = 40;

/// Checks a job id: 1–40 chars of `[A-Za-z0-9-]`.
pub fn check_job_id(id: &str) -> Result<(), String> {
    check_object_id(id)?;
    if id.len() > MAX_JOB_ID_LEN {
        return Err(format!(
            "job id must be at most {MAX_JOB_ID_LEN} characters, got {}",
            id.len()
        ));
    }
    Ok(())
}

/// How a job names the machine that receives an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "by", content = "value")]
pub enum TargetRef {
    /// A ramdisk agent already known, by id.
    Agent(String),
    /// The ramdisk agent that boots on the machine with this NIC (`aa:bb:…`).
    Mac(String),
    /// The ramdisk agent that boots on the machine with this SMBIOS system UUID.
    SystemUuid(String),
    /// A machine a provider makes for the job; its ramdisk agent is known by a MAC.
    New(Box<MachineSpec>),
}

impl TargetRef {
    /// Reads `mac=…`, `uuid=…` or an agent id (or its unique prefix, resolved later).
    pub fn parse(text: &str) -> Result<TargetRef, String> {
        if let Some(mac) = text.strip_prefix("mac=") {
            return parse_mac(mac)
                .map(TargetRef::Mac)
                .map_err(|e| format!("target {text:?}: {e}"));
        }
        if let Some(uuid) = text.strip_prefix("uuid=") {
            let ok = uuid.len() == 36
                && uuid.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
                && uuid.split('-').map(str::len).eq([8, 4, 4, 4, 12]);
            if !ok {
                return Err(format!(
                    "target {text:?}: an SMBIOS UUID looks like uuid=4c4c4544-0042-3510-8052-b4c04f4e3132"
                ));
            }
            return Ok(TargetRef::SystemUuid(uuid.to_ascii_lowercase()));
        }
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!(
                "target {text:?}: give an agent id (or its prefix), mac=AA:BB:CC:DD:EE:FF or uuid=SMBIOS-UUID"
            ));
        }
        Ok(TargetRef::Agent(text.to_string()))
    }

    /// Whether a machine with these facts is this target (an agent id matches by id).
    pub fn matches(&self, agent_id: &str, fingerprint: &crate::protocol::Fingerprint) -> bool {
        match self {
            TargetRef::Agent(id) => agent_id == id,
            TargetRef::Mac(mac) => fingerprint.macs.iter().any(|m| m.eq_ignore_ascii_case(mac)),
            TargetRef::New(spec) => spec
                .macs()
                .iter()
                .any(|mac| TargetRef::Mac(mac.clone()).matches(agent_id, fingerprint)),
            TargetRef::SystemUuid(uuid) => fingerprint
                .system_uuid
                .as_deref()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid)),
        }
    }
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetRef::Agent(id) => write!(f, "agent {}", &id[..id.len().min(12)]),
            TargetRef::Mac(mac) => write!(f, "the machine with NIC {mac}"),
            TargetRef::SystemUuid(uuid) => write!(f, "the machine with SMBIOS UUID {uuid}"),
            TargetRef::New(spec) => write!(
                f,
                "a new machine from provider {} (NIC {})",
                spec.provider,
                spec.macs().join(", ")
            ),
        }
    }
}

/// How a source is captured (see the capture command).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureSettings {
    /// Mount points; empty: every local, persistent filesystem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Globs of paths to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Read live, without snapshots.
    #[serde(default)]
    pub live: bool,
    /// Freeze a filesystem without snapshots for at most this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<u32>,
}

/// How an image is put onto its target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySettings {
    /// The user's plan; the default plan for the target's survey when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Box<DeployPlan>>,
    /// Reboot into the deployed system when done.
    pub reboot: bool,
    /// Leave the disks as they are on failure instead of wiping the new tables.
    #[serde(default)]
    pub keep_on_failure: bool,
    /// How a target that runs its installed agent enters the ramdisk.
    #[serde(default, skip_serializing_if = "crate::protocol::BootMethod::is_auto")]
    pub boot_method: crate::protocol::BootMethod,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum JobKind {
    /// Capture an agent's server into an image of the library.
    Capture {
        /// The source's agent id.
        source: String,
        /// The image's name.
        image: String,
        /// How.
        #[serde(flatten)]
        capture: CaptureSettings,
    },
    /// Deploy an image of the library onto a target.
    Deploy {
        /// The image's name.
        image: String,
        /// A capture of it (the latest when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capture: Option<String>,
        /// The target.
        target: TargetRef,
        /// How.
        #[serde(flatten)]
        deploy: DeploySettings,
    },
    /// Capture a source into the library, then deploy that very capture onto a target
    /// (which may boot its ramdisk meanwhile). A direct migration captures into a
    /// temporary repository of its own instead, discarded once the target is deployed.
    Migrate {
        /// The source's agent id.
        source: String,
        /// The image's name.
        image: String,
        /// The target.
        target: TargetRef,
        /// How the source is captured.
        capture: CaptureSettings,
        /// How the target is deployed.
        deploy: DeploySettings,
        /// Through the job's temporary repository, not the library.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        direct: bool,
    },
}

/// `jobs/<id>/spec.json`: written once, when the job is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Protocol version.
    pub schema: u32,
    /// The job's id.
    pub id: String,
    /// Unix milliseconds when it was made.
    pub created_ms: u64,
    /// What it does.
    #[serde(flatten)]
    pub kind: JobKind,
}

impl Document for JobSpec {
    const KIND: &'static str = "job spec";

    fn schema(&self) -> u32 {
        self.schema
    }

    fn validate(&self) -> Result<(), DocumentError> {
        check_job_id(&self.id).map_err(|d| Self::invalid("id", d))?;
        crate::image::check_image_name(self.image()).map_err(|d| Self::invalid("image", d))?;
        if let Some(TargetRef::New(machine)) = self.target() {
            let problems = machine.problems();
            if !problems.is_empty() {
                return Err(Self::invalid("target", problems.join("; ")));
            }
        }
        Ok(())
    }
}

impl JobSpec {
    /// The job's steps, in the order they are shown.
    pub fn steps(&self) -> &'static [Step] {
        match self.kind {
            JobKind::Capture { .. } => &[Step::Capture],
            JobKind::Deploy { .. } => &[Step::Target, Step::Deploy],
            JobKind::Migrate { direct: false, .. } => &[Step::Capture, Step::Target, Step::Deploy],
            JobKind::Migrate { direct: true, .. } => {
                &[Step::Capture, Step::Target, Step::Deploy, Step::Discard]
            }
        }
    }

    /// Whether the job goes through a temporary repository of its own.
    pub fn direct(&self) -> bool {
        matches!(self.kind, JobKind::Migrate { direct: true, .. })
    }

    /// The job's kind as a word.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            JobKind::Capture { .. } => "capture",
            JobKind::Deploy { .. } => "deploy",
            JobKind::Migrate { .. } => "migrate",
        }
    }

    /// The machine that receives the image, for jobs that deploy.
    pub fn target(&self) -> Option<&TargetRef> {
        match &self.kind {
            JobKind::Deploy { target, .. } | JobKind::Migrate { target, .. } => Some(target),
            JobKind::Capture { .. } => None,
        }
    }

    /// The agent captured, for jobs that capture.
    pub fn source(&self) -> Option<&str> {
        match &self.kind {
            JobKind::Capture { source, .. } | JobKind::Migrate { source, .. } => Some(source),
            JobKind::Deploy { .. } => None,
        }
    }

    /// The image the job makes or uses.
    pub fn image(&self) -> &str {
        match &self.kind {
            JobKind::Capture { image, .. }
            | JobKind::Deploy { image, .. }
            | JobKind::Migrate { image, .. } => image,
        }
    }
}

/// A step of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The source's agent captures its server.
    Capture,
    /// The target's ramdisk agent is found (it may still be booting); a target named
    /// by the id of an installed agent is first brought into its ramdisk.
    Target,
    /// The target's agent deploys the image.
    Deploy,
    /// The manager deletes a direct migration's temporary repository.
    Discard,
}

/// The capture id a direct migration's capture `attempt` is given, so that its
/// deploy can follow it: the same for every manager replica.
pub fn capture_id(job: &str, attempt: u32) -> String {
    format!("{job}-{attempt}")
}

impl Step {
    /// The step's name.
    pub fn name(self) -> &'static str {
        match self {
            Step::Capture => "capture",
            Step::Target => "target",
            Step::Deploy => "deploy",
            Step::Discard => "discard",
        }
    }

    /// The steps that must be done before this one can start.
    fn needs(self, spec: &JobSpec) -> &'static [Step] {
        match (self, &spec.kind) {
            // A direct migration's deploy follows the capture while it runs.
            (Step::Deploy, JobKind::Migrate { direct: true, .. }) => &[Step::Target],
            (Step::Deploy, JobKind::Migrate { .. }) => &[Step::Capture, Step::Target],
            (Step::Deploy, _) => &[Step::Target],
            (Step::Discard, _) => &[Step::Capture, Step::Deploy],
            _ => &[],
        }
    }

    /// The steps that must have started (been sent) before this one can start.
    fn follows(self, spec: &JobSpec) -> &'static [Step] {
        match (self, &spec.kind) {
            (Step::Deploy, JobKind::Migrate { direct: true, .. }) => &[Step::Capture],
            _ => &[],
        }
    }

    /// The command id of this step's `attempt` in `job`: the same for every manager
    /// replica, so an agent that ran it refuses it when another replica sends it again.
    pub fn command_id(self, job: &str, attempt: u32) -> String {
        format!("{job}-{}-{attempt}", self.name())
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a finished step produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "result")]
pub enum Outcome {
    /// The source was captured.
    Captured {
        /// The capture's id.
        capture: String,
        /// Its filesystems.
        filesystems: Vec<FsImage>,
        /// What a restore should know.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// The target's agent was found.
    Matched {
        /// Its id.
        agent: String,
        /// How a target that ran its installed agent was brought into the Ferry
        /// ramdisk (`boot-ramdisk`): the method and why, the ramdisk's network.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entered: Option<String>,
    },
    /// The image was deployed.
    Deployed {
        /// The capture deployed.
        capture: String,
        /// The deploy's steps and their times.
        steps: Vec<StepTime>,
        /// Driver modules added to the deployed kernel.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        drivers_added: Vec<String>,
    },
    /// A direct migration's temporary repository was deleted.
    Discarded {
        /// Objects deleted.
        objects: u64,
        /// Their bytes.
        bytes: u64,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "event")]
pub enum EventKind {
    /// A step's command was written into an agent's mailbox.
    Sent {
        /// The step.
        step: Step,
        /// Which attempt (1 first, one more per retry).
        attempt: u32,
        /// The agent.
        agent: String,
        /// The command's id ([`Step::command_id`]).
        command_id: String,
        /// Its seq.
        seq: u64,
    },
    /// A step finished.
    Done {
        /// The step.
        step: Step,
        /// Which attempt.
        attempt: u32,
        /// What it produced.
        outcome: Outcome,
    },
    /// A step failed.
    Failed {
        /// The step.
        step: Step,
        /// Which attempt.
        attempt: u32,
        /// Why, in the words of whoever failed it.
        error: String,
    },
    /// The user asked to retry the job from its failed step.
    Retried {
        /// The step run again.
        step: Step,
    },
    /// A provider made (or found) the target's machine, which now boots the ramdisk.
    Provisioned {
        /// The machine.
        machine: Machine,
    },
    /// The user cancelled the job: no further command is sent.
    Cancelled {
        /// Who (user@host) asked.
        by: String,
    },
}

/// `jobs/<id>/events/<index:06>.json`: one event, written once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Protocol version.
    pub schema: u32,
    /// The job.
    pub job_id: String,
    /// Unix milliseconds when it happened.
    pub at_ms: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Document for JobEvent {
    const KIND: &'static str = "job event";

    fn schema(&self) -> u32 {
        self.schema
    }
}

impl JobEvent {
    /// An event of `job` now.
    pub fn new(job: &str, at_ms: u64, kind: EventKind) -> JobEvent {
        JobEvent {
            schema: SCHEMA,
            job_id: job.to_string(),
            at_ms,
            kind,
        }
    }
}

/// Where a step stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Its command is with an agent.
    Running {
        /// The agent.
        agent: String,
        /// The command.
        command_id: String,
        /// Its seq.
        seq: u64,
    },
    /// Finished.
    Done {
        /// What it produced.
        outcome: Outcome,
    },
    /// Failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// One step's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepState {
    /// The step.
    pub step: Step,
    /// The current attempt (1 first).
    pub attempt: u32,
    /// Where it stands.
    pub status: StepStatus,
    /// When the current attempt started (its command was sent), Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it ended, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Steps remain.
    Running,
    /// Every step is done.
    Succeeded,
    /// A step failed; `ferry job retry` runs it again.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        })
    }
}

/// A job's state, derived from its spec and events by [`JobState::derive`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobState {
    /// Where the job stands.
    pub status: JobStatus,
    /// Its steps.
    pub steps: Vec<StepState>,
    /// When it ended (succeeded, failed or was cancelled), Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<u64>,
    /// The machine a provider made for the target, once made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Events that did not fit (an unknown step, a stale attempt), kept for the record.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

impl JobState {
    /// Folds the events, in their order, over the spec's steps.
    pub fn derive(spec: &JobSpec, events: &[JobEvent]) -> JobState {
        let mut steps: Vec<StepState> = spec
            .steps()
            .iter()
            .map(|&step| StepState {
                step,
                attempt: 1,
                status: StepStatus::Pending,
                started_ms: None,
                ended_ms: None,
            })
            .collect();
        let mut cancelled = None;
        let mut machine = None;
        let mut ignored = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let (step, attempt) = match &event.kind {
                EventKind::Cancelled { .. } => {
                    cancelled.get_or_insert(event.at_ms);
                    continue;
                }
                // The first machine made stands; a replica that raced to make it
                // found the same one.
                EventKind::Provisioned { machine: m } => {
                    machine.get_or_insert_with(|| m.clone());
                    if let Some(s) = steps.iter_mut().find(|s| s.step == Step::Target) {
                        s.started_ms.get_or_insert(event.at_ms);
                    }
                    continue;
                }
                EventKind::Sent { step, attempt, .. }
                | EventKind::Done { step, attempt, .. }
                | EventKind::Failed { step, attempt, .. } => (*step, Some(*attempt)),
                EventKind::Retried { step } => (*step, None),
            };
            let Some(s) = steps.iter_mut().find(|s| s.step == step) else {
                ignored.push(format!("event {i}: this job has no step {step}"));
                continue;
            };
            if let Some(attempt) = attempt
                && attempt != s.attempt
            {
                ignored.push(format!(
                    "event {i}: {step} attempt {attempt}, the step is at attempt {}",
                    s.attempt
                ));
                continue;
            }
            match &event.kind {
                EventKind::Sent {
                    agent,
                    command_id,
                    seq,
                    ..
                } => {
                    // A second replica's send of the same attempt is the same command.
                    if s.status == StepStatus::Pending {
                        s.status = StepStatus::Running {
                            agent: agent.clone(),
                            command_id: command_id.clone(),
                            seq: *seq,
                        };
                        s.started_ms = Some(event.at_ms);
                    }
                }
                EventKind::Done { outcome, .. } => {
                    if !matches!(s.status, StepStatus::Done { .. }) {
                        s.status = StepStatus::Done {
                            outcome: outcome.clone(),
                        };
                        s.started_ms.get_or_insert(event.at_ms);
                        s.ended_ms = Some(event.at_ms);
                    }
                }
                EventKind::Failed { error, .. } => {
                    if !matches!(
                        s.status,
                        StepStatus::Done { .. } | StepStatus::Failed { .. }
                    ) {
                        s.status = StepStatus::Failed {
                            error: error.clone(),
                        };
                        s.ended_ms = Some(event.at_ms);
                    }
                }
                EventKind::Retried { .. } => {
                    if matches!(s.status, StepStatus::Failed { .. }) {
                        s.attempt += 1;
                        s.status = StepStatus::Pending;
                        s.started_ms = None;
                        s.ended_ms = None;
                    } else {
                        ignored.push(format!("event {i}: retry of {step}, which had not failed"));
                    }
                }
                EventKind::Cancelled { .. } | EventKind::Provisioned { .. } => {}
            }
        }
        let failed = steps
            .iter()
            .filter(|s| matches!(s.status, StepStatus::Failed { .. }))
            .filter_map(|s| s.ended_ms)
            .max();
        let all_done = steps
            .iter()
            .all(|s| matches!(s.status, StepStatus::Done { .. }));
        let (status, ended_ms) = if all_done {
            (
                JobStatus::Succeeded,
                steps.iter().filter_map(|s| s.ended_ms).max(),
            )
        } else if let Some(at) = cancelled {
            (JobStatus::Cancelled, Some(at))
        } else if let Some(at) = failed {
            (JobStatus::Failed, Some(at))
        } else {
            (JobStatus::Running, None)
        };
        JobState {
            status,
            steps,
            ended_ms,
            machine,
            ignored,
        }
    }

    /// The state of one step.
    pub fn step(&self, step: Step) -> Option<&StepState> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// The steps a manager should work on now: running ones (to collect their
    /// answer) and pending ones whose needs are done. None once the job has ended.
    pub fn actionable(&self, spec: &JobSpec) -> Vec<&StepState> {
        if self.status != JobStatus::Running {
            return Vec::new();
        }
        let done = |step: &Step| {
            self.step(*step)
                .is_some_and(|s| matches!(s.status, StepStatus::Done { .. }))
        };
        let started = |step: &Step| {
            self.step(*step).is_some_and(|s| {
                matches!(
                    s.status,
                    StepStatus::Running { .. } | StepStatus::Done { .. }
                )
            })
        };
        self.steps
            .iter()
            .filter(|s| match s.status {
                StepStatus::Running { .. } => true,
                StepStatus::Pending => {
                    s.step.needs(spec).iter().all(done) && s.step.follows(spec).iter().all(started)
                }
                _ => false,
            })
            .collect()
    }

    /// The capture a deploy restores: the capture step's once done; in a direct
    /// migration, the id its running attempt was given ([`capture_id`]), which the
    /// deploy follows.
    pub fn capture_to_restore(&self, spec: &JobSpec) -> Option<String> {
        if let Some(done) = self.captured() {
            return Some(done.to_string());
        }
        let step = self.step(Step::Capture)?;
        (spec.direct() && matches!(step.status, StepStatus::Running { .. }))
            .then(|| capture_id(&spec.id, step.attempt))
    }

    /// The capture a step produced, if the capture step is done.
    pub fn captured(&self) -> Option<&str> {
        match &self.step(Step::Capture)?.status {
            StepStatus::Done {
                outcome: Outcome::Captured { capture, .. },
            } => Some(capture),
            _ => None,
        }
    }

    /// The target's agent, once found.
    pub fn target_agent(&self) -> Option<&str> {
        match &self.step(Step::Target)?.status {
            StepStatus::Done {
                outcome: Outcome::Matched { agent, .. },
            } => Some(agent),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Fingerprint;

    fn migrate() -> JobSpec {
        JobSpec {
            schema: SCHEMA,
            id: "0194f2c3-aaaa-7bbb-8ccc-0123456789ab".into(),
            created_ms: 1_000,
            kind: JobKind::Migrate {
                source: "s".repeat(52),
                image: "web".into(),
                target: TargetRef::Mac("52:54:00:f0:00:21".into()),
                capture: CaptureSettings {
                    live: true,
                    ..Default::default()
                },
                deploy: DeploySettings {
                    plan: None,
                    reboot: true,
                    keep_on_failure: false,
                    boot_method: Default::default(),
                },
                direct: false,
            },
        }
    }

    fn ev(at: u64, kind: EventKind) -> JobEvent {
        JobEvent::new("j", at, kind)
    }

    fn sent(step: Step, attempt: u32, seq: u64) -> EventKind {
        EventKind::Sent {
            step,
            attempt,
            agent: "a".into(),
            command_id: step.command_id("j", attempt),
            seq,
        }
    }

    fn captured() -> EventKind {
        EventKind::Done {
            step: Step::Capture,
            attempt: 1,
            outcome: Outcome::Captured {
                capture: "c1".into(),
                filesystems: vec![],
                warnings: vec![],
            },
        }
    }

    fn matched() -> EventKind {
        EventKind::Done {
            step: Step::Target,
            attempt: 1,
            outcome: Outcome::Matched {
                agent: "t".into(),
                entered: None,
            },
        }
    }

    fn names(state: &JobState, spec: &JobSpec) -> Vec<&'static str> {
        state
            .actionable(spec)
            .iter()
            .map(|s| s.step.name())
            .collect()
    }

    /// A direct migration's deploy starts once the capture is sent and the target
    /// found, following the capture's fixed id; the discard waits for both to end.
    #[test]
    fn a_direct_migration_deploys_while_it_captures() {
        let mut spec = migrate();
        if let JobKind::Migrate { direct, .. } = &mut spec.kind {
            *direct = true;
        }
        let state = JobState::derive(&spec, &[ev(3, matched())]);
        assert_eq!(names(&state, &spec), ["capture"], "nothing to follow yet");
        assert_eq!(state.capture_to_restore(&spec), None);

        let mut events = vec![ev(2, sent(Step::Capture, 1, 10)), ev(3, matched())];
        let state = JobState::derive(&spec, &events);
        assert_eq!(names(&state, &spec), ["capture", "deploy"]);
        let id = capture_id(&spec.id, 1);
        assert_eq!(state.capture_to_restore(&spec), Some(id.clone()));
        assert_eq!(id, "0194f2c3-aaaa-7bbb-8ccc-0123456789ab-1");

        events.push(ev(4, sent(Step::Deploy, 1, 3)));
        events.push(ev(
            5,
            EventKind::Done {
                step: Step::Deploy,
                attempt: 1,
                outcome: Outcome::Deployed {
                    capture: id.clone(),
                    steps: vec![],
                    drivers_added: vec![],
                },
            },
        ));
        let state = JobState::derive(&spec, &events);
        assert_eq!(
            names(&state, &spec),
            ["capture"],
            "discard waits for the capture"
        );
        events.push(ev(9, captured()));
        let state = JobState::derive(&spec, &events);
        assert_eq!(names(&state, &spec), ["discard"]);
        // A two-step migration never follows.
        let spec = migrate();
        let state = JobState::derive(&spec, &events[..2]);
        assert_eq!(state.capture_to_restore(&spec), None);
    }

    #[test]
    fn a_migration_captures_and_finds_its_target_at_once_then_deploys() {
        let spec = migrate();
        let state = JobState::derive(&spec, &[]);
        assert_eq!(state.status, JobStatus::Running);
        assert_eq!(names(&state, &spec), ["capture", "target"]);

        let events = vec![ev(2, sent(Step::Capture, 1, 10)), ev(3, matched())];
        let state = JobState::derive(&spec, &events);
        assert_eq!(
            names(&state, &spec),
            ["capture"],
            "deploy waits for the capture"
        );
        assert_eq!(state.target_agent(), Some("t"));
        assert_eq!(state.step(Step::Capture).unwrap().started_ms, Some(2));

        let mut events = events;
        events.push(ev(9, captured()));
        let state = JobState::derive(&spec, &events);
        assert_eq!(state.captured(), Some("c1"));
        assert_eq!(names(&state, &spec), ["deploy"]);

        events.push(ev(10, sent(Step::Deploy, 1, 11)));
        events.push(ev(
            20,
            EventKind::Done {
                step: Step::Deploy,
                attempt: 1,
                outcome: Outcome::Deployed {
                    capture: "c1".into(),
                    steps: vec![],
                    drivers_added: vec![],
                },
            },
        ));
        let state = JobState::derive(&spec, &events);
        assert_eq!(state.status, JobStatus::Succeeded);
        assert_eq!(state.ended_ms, Some(20));
        assert!(state.actionable(&spec).is_empty());

        // A direct migration then discards its temporary repository, and only then
        // has succeeded.
        let mut direct = spec.clone();
        if let JobKind::Migrate { direct, .. } = &mut direct.kind {
            *direct = true;
        }
        assert!(direct.direct() && !spec.direct());
        let text = serde_json::to_string(&direct).unwrap();
        assert!(text.contains("\"direct\":true"), "{text}");
        assert!(!serde_json::to_string(&spec).unwrap().contains("direct"));
        let state = JobState::derive(&direct, &events);
        assert_eq!(state.status, JobStatus::Running);
        assert_eq!(names(&state, &direct), ["discard"]);
        events.push(ev(
            21,
            EventKind::Done {
                step: Step::Discard,
                attempt: 1,
                outcome: Outcome::Discarded {
                    objects: 9,
                    bytes: 1 << 20,
                },
            },
        ));
        let state = JobState::derive(&direct, &events);
        assert_eq!(state.status, JobStatus::Succeeded);
        assert_eq!(state.ended_ms, Some(21));
    }

    #[test]
    fn a_second_replicas_send_and_answer_change_nothing() {
        let spec = migrate();
        let events = vec![
            ev(2, sent(Step::Capture, 1, 10)),
            ev(3, sent(Step::Capture, 1, 12)),
            ev(9, captured()),
            ev(9, captured()),
        ];
        let state = JobState::derive(&spec, &events);
        let capture = state.step(Step::Capture).unwrap();
        assert_eq!(capture.started_ms, Some(2));
        assert!(matches!(capture.status, StepStatus::Done { .. }));
        assert!(state.ignored.is_empty(), "{:?}", state.ignored);
    }

    #[test]
    fn a_failed_step_fails_the_job_until_retried_under_a_new_command_id() {
        let spec = migrate();
        let mut events = vec![
            ev(2, sent(Step::Capture, 1, 10)),
            ev(
                5,
                EventKind::Failed {
                    step: Step::Capture,
                    attempt: 1,
                    error: "disk full".into(),
                },
            ),
        ];
        let state = JobState::derive(&spec, &events);
        assert_eq!(state.status, JobStatus::Failed);
        assert_eq!(state.ended_ms, Some(5));
        assert!(state.actionable(&spec).is_empty());

        events.push(ev(
            6,
            EventKind::Retried {
                step: Step::Capture,
            },
        ));
        let state = JobState::derive(&spec, &events);
        assert_eq!(state.status, JobStatus::Running);
        let capture = state.step(Step::Capture).unwrap();
        assert_eq!(capture.attempt, 2);
        assert_eq!(capture.status, StepStatus::Pending);
        assert_ne!(
            Step::Capture.command_id("j", 1),
            Step::Capture.command_id("j", 2)
        );

        // A late answer to the first attempt is kept out of the second.
        events.push(ev(7, captured()));
        let state = JobState::derive(&spec, &events);
        assert_eq!(
            state.step(Step::Capture).unwrap().status,
            StepStatus::Pending
        );
        assert_eq!(state.ignored.len(), 1, "{:?}", state.ignored);
    }

    #[test]
    fn a_cancelled_job_has_nothing_left_to_do() {
        let spec = migrate();
        let events = vec![
            ev(2, sent(Step::Capture, 1, 10)),
            ev(
                3,
                EventKind::Cancelled {
                    by: "me@here".into(),
                },
            ),
        ];
        let state = JobState::derive(&spec, &events);
        assert_eq!(state.status, JobStatus::Cancelled);
        assert!(state.actionable(&spec).is_empty());
    }

    #[test]
    fn a_retry_of_a_step_that_did_not_fail_is_ignored() {
        let spec = migrate();
        let state = JobState::derive(&spec, &[ev(3, EventKind::Retried { step: Step::Deploy })]);
        assert_eq!(state.step(Step::Deploy).unwrap().attempt, 1);
        assert_eq!(state.ignored.len(), 1);
    }

    #[test]
    fn targets_are_read_and_matched_by_id_mac_or_uuid() {
        let fp = Fingerprint {
            system_uuid: Some("4C4C4544-0042-3510-8052-B4C04F4E3132".into()),
            macs: vec!["52:54:00:F0:00:21".into()],
            disk_serials: vec![],
        };
        let mac = TargetRef::parse("mac=52:54:00:f0:00:21").unwrap();
        assert!(mac.matches("x", &fp));
        let uuid = TargetRef::parse("uuid=4c4c4544-0042-3510-8052-b4c04f4e3132").unwrap();
        assert!(uuid.matches("x", &fp));
        assert!(TargetRef::parse("abc").unwrap().matches("abc", &fp));
        assert!(
            !TargetRef::parse("mac=52:54:00:f0:00:22")
                .unwrap()
                .matches("x", &fp)
        );
        for bad in ["mac=52:54:00", "uuid=123", "", "id/with/slash"] {
            let e = TargetRef::parse(bad).unwrap_err();
            assert!(e.contains("target"), "{e}");
        }
    }

    #[test]
    fn a_made_machine_is_recorded_once_and_its_agent_found_by_mac() {
        let spec: crate::machine::MachineSpec = serde_json::from_str(
            r#"{"provider":"lab","disks":[{"size_gib":5}],"nics":[{"mac":"52:54:00:F0:00:31"}]}"#,
        )
        .expect("machine");
        let mut job = migrate();
        if let JobKind::Migrate { target, .. } = &mut job.kind {
            *target = TargetRef::New(Box::new(spec.clone()));
        }
        job.validate().expect("valid");
        let made = |created| crate::machine::Machine {
            provider: "lab".into(),
            name: job.id.clone(),
            macs: spec.macs(),
            created,
            console: None,
        };
        let events = [
            ev(
                5,
                EventKind::Provisioned {
                    machine: made(true),
                },
            ),
            ev(
                6,
                EventKind::Provisioned {
                    machine: made(false),
                },
            ),
        ];
        let state = JobState::derive(&job, &events);
        assert_eq!(state.machine, Some(made(true)));
        let target = state.step(Step::Target).expect("target");
        assert_eq!(
            (&target.status, target.started_ms),
            (&StepStatus::Pending, Some(5))
        );
        let fp = |mac: &str| Fingerprint {
            macs: vec![mac.into()],
            ..Default::default()
        };
        let t = job.target().expect("target");
        assert!(t.matches("x", &fp("52:54:00:f0:00:31")));
        assert!(!t.matches("x", &fp("52:54:00:f0:00:32")));
        assert!(t.to_string().contains("provider lab"), "{t}");

        // A spec the provider could not make is refused with the job.
        if let JobKind::Migrate { target, .. } = &mut job.kind {
            *target = TargetRef::New(Box::new(crate::machine::MachineSpec {
                disks: Vec::new(),
                ..spec
            }));
        }
        let e = job.validate().expect_err("no disks");
        assert!(e.to_string().contains("disks"), "{e}");
    }

    #[test]
    fn a_spec_reads_back_and_a_bad_one_is_named() {
        let spec = migrate();
        let back = JobSpec::parse(&spec.to_bytes()).unwrap();
        assert_eq!(back, spec);
        let mut bad = spec.clone();
        bad.id = "x".repeat(41);
        let e = JobSpec::parse(&bad.to_bytes()).unwrap_err().to_string();
        assert!(e.contains("job spec") && e.contains("id"), "{e}");
        let event = ev(2, sent(Step::Capture, 1, 10));
        assert_eq!(JobEvent::parse(&event.to_bytes()).unwrap(), event);
        let command = Step::Deploy.command_id(&spec.id, 12);
        assert!(check_object_id(&command).is_ok(), "{command}");
    }
}
