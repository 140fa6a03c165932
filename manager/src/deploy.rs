//! `ferry deploy IMAGE --to AGENT`: a deploy plan for a ramdisk agent's machine —
//! the default one for its survey, or the user's — checked here first, then sent
//! with the library's sealed secrets; the agent lays out, restores, configures,
//! makes the machine boot and, unless told not to, reboots into it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ferry_model::deploy::{DeployPlan, SourceFs, default_plan};
use ferry_model::image::Manifest;
use ferry_model::job::TargetRef;
use ferry_model::protocol::{Action, AgentKind, MessageBody};

use crate::config::ManagerConfig;
use crate::fleet::Fleet;
use crate::images::{Repo, failure, run_on_agent};

/// Options of `ferry deploy`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployOptions {
    /// The machine that receives the image: a ramdisk agent (id or unique prefix),
    /// deployed directly; or, as a job (see `ferry migrate --to`), an installed
    /// agent, whose server is first brought into its ramdisk, mac=…, uuid=… or
    /// new=FILE.
    #[arg(long = "to")]
    pub to: String,
    /// A capture id of the image (default: the latest).
    #[arg(long)]
    pub capture: Option<String>,
    /// Print the plan (YAML) after checking it, and send nothing.
    #[arg(long)]
    pub plan_only: bool,
    /// The plan, the reboot, a failure's wipe and the boot method.
    #[command(flatten)]
    pub how: DeployHow,
    /// Printing, waiting, or making a job and returning (`--detach`).
    #[command(flatten)]
    pub watch: crate::jobs::cli::WatchOptions,
}

/// How a deploy is made, for `ferry deploy` and a job's deploy step.
#[derive(Debug, Clone, clap::Args)]
pub struct DeployHow {
    /// A deploy plan (YAML or JSON) instead of the default one for the target.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Stay in the ramdisk when done instead of rebooting into the deployed system.
    #[arg(long)]
    pub no_reboot: bool,
    /// On failure, leave the target's disks as they are instead of wiping the new
    /// partition tables (a half-written disk may then boot).
    #[arg(long)]
    pub keep_on_failure: bool,
    /// How a target that runs its installed agent enters the ramdisk first: auto
    /// (the safest that works there), grub-once, kexec or init.
    #[arg(long, default_value = "auto")]
    pub boot_method: ferry_model::protocol::BootMethod,
}

impl DeployHow {
    /// As a job records it (the plan read from its file).
    pub fn settings(&self) -> Result<ferry_model::job::DeploySettings> {
        Ok(ferry_model::job::DeploySettings {
            plan: self
                .plan
                .as_deref()
                .map(read_plan)
                .transpose()?
                .map(Box::new),
            reboot: !self.no_reboot,
            keep_on_failure: self.keep_on_failure,
            boot_method: self.boot_method,
        })
    }
}

/// A deploy plan from a YAML or JSON file.
pub(crate) fn read_plan(file: &std::path::Path) -> Result<DeployPlan> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("plan {}: cannot read it", file.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("plan {}: {e}", file.display()))
}

/// The plan for `image` on agent `id`'s machine: the user's, or the default for the
/// survey in its status; refused here with every problem before anything is sent.
async fn plan_for(
    config: &ManagerConfig,
    image: &str,
    id: &str,
    opts: &DeployOptions,
) -> Result<DeployPlan> {
    let from_file = opts.how.plan.as_deref().map(read_plan).transpose()?;
    let fleet = crate::cli::fleet(config)?;
    let id = fleet.resolve(id).await?;
    checked_plan(
        &Repo::library(config)?,
        &fleet,
        image,
        opts.capture.as_deref(),
        from_file,
        &id,
        opts.how.keep_on_failure,
        None,
    )
    .await
}

/// A capture still running that a deploy follows: what it has written so far (its
/// layout, survey and the filesystems to come), and how long to wait for each of them.
pub(crate) struct Following {
    /// [`ferry_image::Library::manifest_so_far`].
    pub manifest: Manifest,
    /// The plan's `follow_secs`.
    pub secs: u64,
}

/// The plan to deploy `capture` (or the plan's, or the latest) of `image` onto agent
/// `id`'s machine: `user`'s, or the default one for the survey in its status; checked
/// against the image's manifest, every problem named. When `following` a capture
/// still running, the plan is made from what it has written so far, and the deploy
/// follows it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn checked_plan(
    repo: &Repo,
    fleet: &Fleet,
    image: &str,
    capture: Option<&str>,
    user: Option<DeployPlan>,
    id: &str,
    keep_on_failure: bool,
    following: Option<Following>,
) -> Result<DeployPlan> {
    let planned = user.as_ref().and_then(|p| p.capture.clone());
    if let (Some(asked), Some(planned)) = (capture, &planned)
        && asked != planned
    {
        bail!("capture {asked} was asked for, but the plan is for capture {planned}");
    }
    // A plan names its capture; else the one asked for; else the latest.
    let at = planned.or_else(|| capture.map(str::to_string));
    let (manifest, follow_secs) = match following {
        Some(f) => (f.manifest, Some(f.secs)),
        None => {
            let image = image.to_string();
            let manifest = repo
                .with(move |lib| lib.manifest(&image, at.as_deref()))
                .await?;
            (manifest, None)
        }
    };
    let mut plan = match user {
        Some(plan) => plan,
        None => {
            let status =
                fleet.view(id).await?.status.with_context(|| {
                    format!("agent {id} has published no status (no survey) yet")
                })?;
            default_plan(&manifest, &status.survey).map_err(|e| anyhow::anyhow!(e))?
        }
    };
    if plan.image != image {
        bail!("plan is for image {}, not {image}", plan.image);
    }
    plan.capture = Some(manifest.capture.clone());
    plan.keep_on_failure |= keep_on_failure;
    plan.follow_secs = follow_secs;
    let problems = plan.validate(&SourceFs::of(&manifest));
    if !problems.is_empty() {
        bail!(
            "deploy of image {image} onto agent {id}: the plan cannot be carried out:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(plan)
}

/// Whether `ferry deploy --to TARGET` is carried by a job: asked for, or a target
/// that is not a ramdisk agent (yet).
async fn as_job(config: &ManagerConfig, opts: &DeployOptions) -> Result<bool> {
    if opts.watch.detach {
        return Ok(true);
    }
    let Ok(TargetRef::Agent(prefix)) = TargetRef::parse(&opts.to) else {
        return Ok(true);
    };
    let fleet = crate::cli::fleet(config)?;
    let view = fleet.view(&fleet.resolve(&prefix).await?).await?;
    Ok(view.kind() == Some(AgentKind::Installed))
}

/// `ferry deploy IMAGE --to TARGET`.
pub async fn deploy(config: &ManagerConfig, image: &str, opts: &DeployOptions) -> Result<()> {
    if !opts.plan_only && as_job(config, opts).await? {
        return crate::jobs::cli::deploy_job(config, image, opts).await;
    }
    let plan = plan_for(config, image, &opts.to, opts).await?;
    if opts.plan_only {
        print!(
            "{}",
            serde_saphyr::to_string(&plan)
                .map_err(|e| anyhow::anyhow!("encoding the plan: {e}"))?
        );
        return Ok(());
    }
    let reboot = !opts.how.no_reboot;
    let (id, reply) = run_on_agent(
        config,
        &opts.to,
        |library| Action::Deploy {
            library,
            plan: Box::new(plan.clone()),
            reboot,
        },
        opts.watch.timeout,
    )
    .await?;
    match reply.body {
        MessageBody::Deployed {
            image,
            capture,
            steps,
            drivers_added,
        } => {
            if opts.watch.json {
                println!(
                    "{}",
                    serde_json::json!({"agent": id, "image": image, "capture": capture,
                        "steps": steps, "drivers_added": drivers_added, "rebooting": reboot})
                );
                return Ok(());
            }
            println!(
                "{}: deployed image {image} (capture {capture}){}",
                &id[..12],
                if reboot { "; rebooting into it" } else { "" }
            );
            for s in &steps {
                println!("  {:<12} {:>8.1} s", s.step, s.millis as f64 / 1000.0);
            }
            if !drivers_added.is_empty() {
                println!("  drivers added: {}", drivers_added.join(", "));
            }
            Ok(())
        }
        other => Err(failure(&id, other)),
    }
}

#[cfg(test)]
mod tests {
    use ferry_model::deploy::DeployPlan;
    use ferry_model::deploy::examples::{mirror, plan};

    /// What `--plan-only` prints, `--plan` reads back unchanged (the suites edit it).
    #[test]
    fn a_printed_plan_reads_back() {
        let mut p = plan();
        let (disks, md) = mirror(&["vda", "vdb"], 1 << 30);
        p.storage.disks = disks;
        p.storage.md = vec![md];
        p.capture = Some("01a21da3".into());
        let text = serde_saphyr::to_string(&p).expect("printed");
        let back: DeployPlan = serde_saphyr::from_str(&text).expect("read back");
        assert_eq!(back, p, "{text}");
    }
}
