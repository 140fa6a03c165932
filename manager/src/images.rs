//! The image commands: `ferry capture` and `ferry restore` through an agent's
//! mailbox, and `ferry images` / `ferry image show|rm|check` on the library itself.
//!
//! The library's repository password and its scoped store credential are sealed to
//! the one agent and the one command; an agent's standing credential reaches only its
//! mailbox.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_image::progress::size;
use ferry_image::{Library, Location};
use ferry_model::protocol::{
    Action, Identity, LibraryRef, MessageBody, MessagePayload, SECRET_LIBRARY_CREDENTIAL,
    SECRET_LIBRARY_PASSWORD, StoreCredential,
};

use crate::config::{LibraryConfig, ManagerConfig};
use crate::fleet::Fleet;

fn library_config(config: &ManagerConfig) -> Result<&LibraryConfig> {
    config.library.as_ref().context(
        "the manager config has no image library: add a `library:` section (url, password_file, credential)",
    )
}

fn password(lib: &LibraryConfig) -> Result<String> {
    let text = std::fs::read_to_string(&lib.password_file).with_context(|| {
        format!(
            "library password file {}: cannot read it",
            lib.password_file.display()
        )
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// A repository the manager sends agents to: the library, or a direct migration's
/// temporary one in the library's folder `direct/JOB/`, with a password of its own
/// that every replica derives from the library's and the job's id.
#[derive(Clone)]
pub(crate) struct Repo {
    lib: LibraryConfig,
    password: String,
    /// A direct migration's: the only kind [`Repo::discard`] deletes.
    temporary: bool,
}

impl std::fmt::Debug for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repo").field("url", &self.lib.url).finish()
    }
}

/// The library's folder holding direct migrations' temporary repositories.
pub(crate) const DIRECT_FOLDER: &str = "direct";

impl Repo {
    /// The library.
    pub(crate) fn library(config: &ManagerConfig) -> Result<Repo> {
        let lib = library_config(config)?.clone();
        let password = password(&lib)?;
        Ok(Repo {
            lib,
            password,
            temporary: false,
        })
    }

    /// Direct migration `job`'s temporary repository.
    pub(crate) fn direct(config: &ManagerConfig, job: &str) -> Result<Repo> {
        let library = Repo::library(config)?;
        let mut key = blake3::Hasher::new_derive_key("ferry 2026-11 direct migration repository");
        key.update(library.password.as_bytes());
        key.update(&[0]);
        key.update(job.as_bytes());
        let below = |url: &str| format!("{}/{DIRECT_FOLDER}/{job}", url.trim_end_matches('/'));
        let lib = LibraryConfig {
            url: below(&library.lib.url),
            agent_url: library.lib.agent_url.as_deref().map(below),
            ..library.lib
        };
        Ok(Repo {
            lib,
            password: key.finalize().to_hex().to_string(),
            temporary: true,
        })
    }

    /// The repository of job `spec`: its own when direct, else the library.
    pub(crate) fn of_job(config: &ManagerConfig, spec: &ferry_model::job::JobSpec) -> Result<Repo> {
        if spec.direct() {
            Repo::direct(config, &spec.id)
        } else {
            Repo::library(config)
        }
    }

    /// Where the manager reaches it.
    pub(crate) fn url(&self) -> &str {
        &self.lib.url
    }

    /// Opens it as the manager reaches it. Blocking: call it off the runtime.
    pub(crate) fn open(&self) -> Result<Library> {
        let access = self
            .lib
            .credential
            .as_ref()
            .map(|c| (c.access_key.clone(), c.secret_key.clone()));
        let loc = Location::with_access(&self.lib.url, self.lib.ca_pem.clone(), access)?;
        Library::connect(&loc, &self.password)
    }

    /// Runs `f` on the opened repository off the runtime.
    pub(crate) async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(Library) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let repo = self.clone();
        tokio::task::spawn_blocking(move || f(repo.open()?)).await?
    }

    /// Deletes it, if it is a direct migration's temporary repository (never the
    /// library); (objects, bytes).
    pub(crate) async fn discard(&self) -> Result<(u64, u64)> {
        anyhow::ensure!(
            self.temporary,
            "{}: only a direct migration's temporary repository is discarded, never the library",
            self.lib.url
        );
        self.with(|lib| lib.discard()).await
    }

    /// Creates it unless it exists (safe for racing replicas).
    pub(crate) async fn ensure(&self) -> Result<()> {
        self.with(|lib| lib.ensure().map(drop)).await
    }

    /// What goes in a command for `agent`: where it is, and the sealed secrets.
    fn for_agent(
        &self,
        agent: &Identity,
        command_id: &str,
    ) -> Result<(LibraryRef, BTreeMap<String, ferry_model::protocol::Sealed>)> {
        let seal = |name: &str, bytes: &[u8]| Fleet::seal_for(agent, command_id, name, bytes);
        let mut secrets = BTreeMap::new();
        secrets.insert(
            SECRET_LIBRARY_PASSWORD.to_string(),
            seal(SECRET_LIBRARY_PASSWORD, self.password.as_bytes())?,
        );
        if let Some(c) = &self.lib.credential {
            let cred = serde_json::to_vec(&StoreCredential {
                access_key: c.access_key.clone(),
                secret_key: c.secret_key.clone(),
            })?;
            secrets.insert(
                SECRET_LIBRARY_CREDENTIAL.to_string(),
                seal(SECRET_LIBRARY_CREDENTIAL, &cred)?,
            );
        }
        let library = LibraryRef {
            url: self
                .lib
                .agent_url
                .clone()
                .unwrap_or_else(|| self.lib.url.clone()),
            ca_pem: self.lib.ca_pem.clone(),
        };
        Ok((library, secrets))
    }

    /// Sends agent `id` an image command on this repository under `command_id`, with
    /// its secrets sealed to that agent and that command id.
    pub(crate) async fn send(
        &self,
        fleet: &Fleet,
        id: &str,
        command_id: &str,
        make: impl FnOnce(LibraryRef) -> Action,
    ) -> Result<ferry_model::protocol::CommandPayload> {
        let identity = fleet
            .view(id)
            .await?
            .identity
            .with_context(|| format!("agent {id} has no identity in its mailbox yet"))?;
        let (library, secrets) = self.for_agent(&identity, command_id)?;
        fleet
            .send_prepared(id, command_id, make(library), secrets)
            .await
    }
}

/// Opens the library as the manager reaches it. Blocking: call it off the runtime.
pub fn open(config: &ManagerConfig) -> Result<Library> {
    Repo::library(config)?.open()
}

/// Sends an image command (with its sealed secrets) and waits for the answer,
/// drawing the agent's reported progress on a terminal meanwhile.
pub(crate) async fn run_on_agent(
    config: &ManagerConfig,
    id: &str,
    make: impl FnOnce(LibraryRef) -> Action,
    timeout: f64,
) -> Result<(String, MessagePayload)> {
    let timeout = Duration::from_secs_f64(timeout);
    let fleet = crate::cli::fleet(config)?;
    let id = fleet.resolve(id).await?;
    let command_id = uuid::Uuid::now_v7().to_string();
    let cmd = Repo::library(config)?
        .send(&fleet, &id, &command_id, make)
        .await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let terminal = std::io::stderr().is_terminal();
    loop {
        if let Some(reply) = fleet.reply_now(&id, &cmd.command_id).await? {
            if terminal {
                eprint!("\r\x1b[2K");
            }
            return Ok((id, reply));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "agent {id} did not finish {} within {:.0} s; it may still be working (`ferry agent show {}`)",
                cmd.action.name(),
                timeout.as_secs_f64(),
                &id[..12]
            );
        }
        if terminal
            && let Ok(v) = fleet.view(&id).await
            && let Some(status) = v.status
            && let Some(p) = status.progress
        {
            let line = ferry_image::Report {
                phase: format!("{} {}", status.phase, status.step.unwrap_or_default()),
                bytes: p.done,
                bytes_total: (p.total > 0).then_some(p.total),
                files: p.files.unwrap_or(0),
                rate: p.rate,
                eta_secs: p.eta_secs,
            }
            .line();
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fails with the agent's own words when it did not do the work.
pub(crate) fn failure(id: &str, body: MessageBody) -> anyhow::Error {
    match body {
        MessageBody::Failed { code, text, .. } => anyhow::anyhow!("agent {id}: {text} ({code})"),
        MessageBody::Refused { text, reason, .. } => {
            anyhow::anyhow!("agent {id} refused the command ({}): {text}", reason.code())
        }
        other => anyhow::anyhow!("agent {id} answered unexpectedly: {other:?}"),
    }
}

/// Which filesystems of a source are captured, and how they are read (`ferry capture`,
/// `ferry migrate`).
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureHow {
    /// Mount point to capture (repeatable; default: every local, persistent filesystem).
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Leave out paths matching this glob (repeatable).
    #[arg(long = "exclude")]
    pub excludes: Vec<String>,
    /// Read the filesystems live, without snapshots.
    #[arg(long)]
    pub live: bool,
    /// Where no snapshot can be taken, freeze the filesystem (fsfreeze) while it is
    /// read, for at most SECONDS; writers wait meanwhile. The root filesystem and the
    /// agent's own folders are never frozen.
    #[arg(long, value_name = "SECONDS", conflicts_with = "live")]
    pub freeze: Option<u32>,
}

impl CaptureHow {
    /// As a job records it.
    pub fn settings(&self) -> ferry_model::job::CaptureSettings {
        ferry_model::job::CaptureSettings {
            paths: self.paths.clone(),
            excludes: self.excludes.clone(),
            live: self.live,
            freeze: self.freeze,
        }
    }
}

/// Options of `ferry capture`.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureOptions {
    /// Image name.
    #[arg(long)]
    pub image: String,
    /// Which filesystems, and how they are read.
    #[command(flatten)]
    pub how: CaptureHow,
    /// A partition or volume (not mounted) whose block data is captured (repeatable);
    /// with no --path, only these are captured.
    #[arg(long, value_name = "DEVICE")]
    pub raw: Vec<String>,
    /// Printing, waiting, or making a job and returning (`--detach`).
    #[command(flatten)]
    pub watch: crate::jobs::cli::WatchOptions,
}

/// `ferry capture AGENT --image NAME`: creates the library if there is none, then
/// has the agent capture its server into the image.
pub async fn capture(config: &ManagerConfig, id: &str, opts: &CaptureOptions) -> Result<()> {
    ferry_model::image::check_image_name(&opts.image)
        .map_err(|e| anyhow::anyhow!("image {:?}: {e}", opts.image))?;
    Repo::library(config)?.ensure().await?;
    if opts.watch.detach {
        let job = crate::jobs::cli::capture_job(config, id, opts).await?;
        println!("{job}");
        return Ok(());
    }
    let (id, reply) = run_on_agent(
        config,
        id,
        |library| Action::Capture {
            image: opts.image.clone(),
            library,
            paths: opts.how.paths.clone(),
            excludes: opts.how.excludes.clone(),
            live: opts.how.live,
            freeze: opts.how.freeze,
            raw: opts.raw.clone(),
            capture: None,
            progressive: false,
        },
        opts.watch.timeout,
    )
    .await?;
    match reply.body {
        MessageBody::Captured {
            image,
            capture,
            filesystems,
            warnings,
        } => {
            if opts.watch.json {
                println!(
                    "{}",
                    serde_json::json!({"agent": id, "image": image, "capture": capture,
                        "filesystems": filesystems, "warnings": warnings})
                );
                return Ok(());
            }
            println!("{}: image {image} capture {capture}", &id[..12]);
            for f in &filesystems {
                println!(
                    "  {:<20} {:>10} in {} files, {} new, {:?}",
                    f.path,
                    size(f.bytes),
                    f.files,
                    size(f.added_bytes),
                    f.consistency
                );
            }
            for w in &warnings {
                println!("  warning: {w}");
            }
            Ok(())
        }
        other => Err(failure(&id, other)),
    }
}

/// Options of `ferry restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreOptions {
    /// Image name.
    #[arg(long)]
    pub image: String,
    /// A capture id (default: the latest).
    #[arg(long)]
    pub capture: Option<String>,
    /// The filesystem's path in the image, e.g. `/`.
    #[arg(long)]
    pub fs: String,
    /// The directory to restore into, on the agent's machine.
    #[arg(long)]
    pub to: String,
    /// Restore over what is in the directory already.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the restore to finish.
    #[arg(long, default_value_t = 86400.0)]
    pub timeout: f64,
}

/// `ferry restore AGENT --image NAME --fs PATH --to DIR`.
pub async fn restore(config: &ManagerConfig, id: &str, opts: &RestoreOptions) -> Result<()> {
    let (id, reply) = run_on_agent(
        config,
        id,
        |library| Action::Restore {
            image: opts.image.clone(),
            library,
            capture: opts.capture.clone(),
            fs: opts.fs.clone(),
            to: opts.to.clone(),
            overwrite: opts.overwrite,
        },
        opts.timeout,
    )
    .await?;
    match reply.body {
        MessageBody::Restored {
            image,
            capture,
            fs,
            to,
            report,
        } => {
            if opts.json {
                println!(
                    "{}",
                    serde_json::json!({"agent": id, "image": image, "capture": capture,
                        "fs": fs, "to": to, "report": report})
                );
            } else {
                println!(
                    "{}: restored {fs} of image {image} (capture {capture}) into {to}: {} files ({}), {} directories, {} hardlinks, {} symlinks, {} special files",
                    &id[..12],
                    report.files,
                    size(report.bytes),
                    report.dirs,
                    report.hardlinks,
                    report.symlinks,
                    report.specials
                );
            }
            Ok(())
        }
        other => Err(failure(&id, other)),
    }
}

/// `ferry images`.
pub fn images(config: &ManagerConfig, json: bool) -> Result<()> {
    let lib = open(config)?;
    if !lib.exists()? {
        if json {
            println!("[]");
        } else {
            println!("no images yet (the library is made by the first `ferry capture`)");
        }
        return Ok(());
    }
    ferry_agent::library::images(&lib, json)
}

/// `ferry image show NAME`: the image's captures and its latest (or given) manifest.
pub fn show(config: &ManagerConfig, image: &str, capture: Option<&str>, json: bool) -> Result<()> {
    let lib = open(config)?;
    let manifest = lib.manifest(image, capture)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(());
    }
    let summary = lib.images()?.into_iter().find(|i| i.name == image);
    println!(
        "image {image}: host {}, capture {} ({} – {})",
        manifest.hostname, manifest.capture, manifest.started, manifest.finished
    );
    for f in &manifest.filesystems {
        println!(
            "  {:<20} {:<6} {:>10} in {} files, {:?}, snapshot {}",
            f.path,
            f.fstype.as_deref().unwrap_or("?"),
            size(f.bytes),
            f.files,
            f.consistency,
            &f.snapshot[..8.min(f.snapshot.len())]
        );
    }
    for w in &manifest.warnings {
        println!("  warning: {w}");
    }
    if let Some(s) = summary {
        println!("captures (oldest first):");
        for (id, at) in s.captures {
            println!("  {id}  {at}");
        }
    }
    Ok(())
}

/// `ferry image rm NAME [--capture ID]`: forgets the captures and frees their data.
pub fn remove(config: &ManagerConfig, image: &str, capture: Option<&str>) -> Result<()> {
    let lib = open(config)?;
    let n = lib.remove(image, capture)?;
    match capture {
        Some(c) => println!("removed capture {c} of image {image} ({n} snapshots)"),
        None => println!("removed image {image} ({n} snapshots)"),
    }
    Ok(())
}

/// `ferry image check NAME`: verifies the image's structure and, with `read_data`,
/// every byte of its packs. Fails naming the damage.
pub fn check(config: &ManagerConfig, image: &str, read_data: bool, json: bool) -> Result<()> {
    let lib = open(config)?;
    let report = lib.check(Some(image), read_data)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for w in &report.warnings {
            println!("warning: {w}");
        }
        for e in &report.errors {
            println!("error: {e}");
        }
    }
    if !report.errors.is_empty() {
        bail!(
            "image {image} is damaged: {} error(s); the first: {}",
            report.errors.len(),
            report.errors[0]
        );
    }
    if !json {
        println!(
            "image {image}: {} snapshot(s) checked{}, no errors",
            report.snapshots,
            if read_data { ", all data read" } else { "" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(dir: &std::path::Path, temporary: bool) -> Repo {
        Repo {
            lib: LibraryConfig {
                url: dir.display().to_string(),
                agent_url: None,
                password_file: dir.join("unused"),
                credential: None,
                ca_pem: None,
            },
            password: "a password".into(),
            temporary,
        }
    }

    /// Only a direct migration's temporary repository is ever discarded.
    #[tokio::test]
    async fn the_library_is_never_discarded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let library = repo(dir.path(), false);
        library.ensure().await.expect("made");
        let err = library.discard().await.expect_err("refused");
        assert!(err.to_string().contains("never the library"), "{err:#}");
        assert!(dir.path().join("config").exists(), "the library must stay");
        let (objects, _) = repo(dir.path(), true).discard().await.expect("discarded");
        assert!(objects > 0);
        assert!(!dir.path().join("config").exists());
    }
}
