//! The standalone image commands, for a rescue situation: capture this machine into
//! a library, restore a filesystem from one, list what a library holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_image::{CaptureRequest, Library, Location, Meter, RestoreRequest};
use ferry_model::protocol::{Action, LibraryRef, MessageBody};

use crate::capture::ReadOptions;
use crate::runner::LibrarySecrets;

/// Opens the library at `location` with the password in `password_file`.
pub fn connect(location: &str, password_file: &Path) -> Result<Library> {
    let password = std::fs::read_to_string(password_file)
        .with_context(|| format!("password file {}: cannot read it", password_file.display()))?;
    let password = password.trim_end_matches(['\n', '\r']);
    Library::connect(&Location::parse(location)?, password)
}

/// How to read filesystems for a capture into `lib`: `freeze` is the bound in
/// seconds, and the filesystems of `keep_writable`, of the temporary folder and of
/// a library folder are never frozen.
pub fn read_options(
    lib: &Library,
    live: bool,
    freeze: Option<u32>,
    keep_writable: &[PathBuf],
) -> ReadOptions {
    let mut keep: Vec<PathBuf> = keep_writable.to_vec();
    keep.push(std::env::temp_dir());
    keep.extend(lib.location().folder());
    ReadOptions {
        live,
        freeze: freeze.map(|s| Duration::from_secs(u64::from(s.max(1)))),
        keep_writable: keep,
    }
}

/// Runs a mailbox `capture`, `restore` or `deploy` (on a blocking thread); the
/// answer to send.
/// `keep_writable`: the agent's own folders, never frozen.
pub fn run_command(
    action: &Action,
    secrets: &LibrarySecrets,
    keep_writable: &[PathBuf],
    meter: &Arc<Meter>,
) -> Result<MessageBody> {
    let open = |library: &LibraryRef| -> Result<Library> {
        let access = secrets
            .credential
            .as_ref()
            .map(|c| (c.access_key.clone(), c.secret_key.clone()));
        let loc = Location::with_access(&library.url, library.ca_pem.clone(), access)?;
        Library::connect(&loc, &secrets.password)
    };
    match action {
        Action::Capture {
            image,
            library,
            paths,
            excludes,
            live,
            freeze,
            raw,
            capture,
            progressive,
        } => {
            let lib = open(library)?;
            let host = crate::survey::Host::live();
            let paths: Vec<PathBuf> = if paths.is_empty() && raw.is_empty() {
                crate::capture::default_paths(&host)?
            } else {
                paths.iter().map(PathBuf::from).collect()
            };
            let raw: Vec<PathBuf> = raw.iter().map(PathBuf::from).collect();
            let opts = read_options(&lib, *live, *freeze, keep_writable);
            let what = Sources {
                paths: &paths,
                raw: &raw,
                excludes,
                capture: capture.as_deref(),
                progressive: *progressive,
            };
            let manifest = capture_paths(&lib, &host, image, &what, &opts, meter)?;
            Ok(MessageBody::Captured {
                image: manifest.image,
                capture: manifest.capture,
                filesystems: manifest.filesystems,
                warnings: manifest.warnings,
            })
        }
        Action::Restore {
            image,
            library,
            capture,
            fs,
            to,
            overwrite,
        } => {
            let lib = open(library)?;
            let manifest = lib.manifest(image, capture.as_deref())?;
            let req = RestoreRequest {
                image: image.clone(),
                at: Some(manifest.capture.clone()),
                fs: fs.clone(),
                target: PathBuf::from(to),
                overwrite: *overwrite,
                follow: None,
            };
            let report = ferry_image::restore(&lib, &req, meter)?;
            if report.error_count > 0 {
                bail!(
                    "{} entries of {fs} were not restored into {to}: {}",
                    report.error_count,
                    report
                        .errors
                        .iter()
                        .take(10)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            Ok(MessageBody::Restored {
                image: image.clone(),
                capture: manifest.capture,
                fs: fs.clone(),
                to: to.clone(),
                report,
            })
        }
        Action::Deploy { library, plan, .. } => {
            let lib = open(library)?;
            let done = crate::deploy::run(&crate::survey::Host::live(), &lib, plan, meter)?;
            Ok(MessageBody::Deployed {
                image: plan.image.clone(),
                capture: done.capture,
                steps: done.steps,
                drivers_added: done.drivers_added,
            })
        }
        other => bail!("{} is not an image command", other.name()),
    }
}

/// What a capture reads.
pub struct Sources<'a> {
    /// Mount points.
    pub paths: &'a [PathBuf],
    /// Devices whose block data is captured.
    pub raw: &'a [PathBuf],
    /// Globs left out of the mount points.
    pub excludes: &'a [String],
    /// The capture id to use (see [`CaptureRequest::capture`]).
    pub capture: Option<&'a str>,
    /// Tell the library of the capture's progress as it goes (see
    /// [`CaptureRequest::progressive`]).
    pub progressive: bool,
}

/// Captures `what` of `host`, each from a snapshot where one can be taken (released
/// before this returns), with a survey in the manifest.
fn capture_paths(
    lib: &Library,
    host: &crate::survey::Host,
    image: &str,
    what: &Sources<'_>,
    opts: &ReadOptions,
    meter: &Arc<Meter>,
) -> Result<ferry_model::image::Manifest> {
    if what.paths.is_empty() && what.raw.is_empty() {
        bail!("image {image}: give mount points or devices (--raw) to capture");
    }
    let plan = crate::capture::plan(host, what.paths, what.raw, opts)?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let req = CaptureRequest {
        image: image.to_string(),
        filesystems: plan.sources.clone(),
        excludes: what.excludes.to_vec(),
        hostname: host.read("/proc/sys/kernel/hostname").unwrap_or_default(),
        survey: None,
        warnings: plan.warnings.clone(),
        capture: what.capture.map(str::to_string),
        progressive: what.progressive,
    };
    // The survey (for the manifest) runs while the filesystems are read.
    ferry_image::capture_surveyed(lib, &req, meter, || Some(crate::survey::survey()))
}

/// `ferry-agent capture`: the given mount points, each from a snapshot where one can be
/// taken. Prints the manifest (JSON) or a summary.
pub fn capture(
    lib: &Library,
    image: &str,
    what: &Sources<'_>,
    opts: &ReadOptions,
    init: bool,
    json: bool,
) -> Result<()> {
    if init {
        lib.ensure()?;
    }
    let host = crate::survey::Host::live();
    let meter = Meter::new(Duration::from_millis(250), None);
    let manifest = capture_paths(lib, &host, image, what, opts, &meter)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        println!("image {} capture {}", manifest.image, manifest.capture);
        for f in &manifest.filesystems {
            println!(
                "  {:<20} {:>10} in {} files, {} new, {:?}, snapshot {}",
                f.path,
                ferry_image::progress::size(f.bytes),
                f.files,
                ferry_image::progress::size(f.added_bytes),
                f.consistency,
                &f.snapshot[..8.min(f.snapshot.len())]
            );
        }
    }
    Ok(())
}

/// `ferry-agent restore`: one filesystem of an image into a directory. Fails when any
/// entry failed, after naming them.
pub fn restore(lib: &Library, req: &RestoreRequest, json: bool) -> Result<()> {
    let meter = Meter::new(Duration::from_millis(250), None);
    let report = ferry_image::restore(lib, req, &meter)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "restored {} of image {} into {}: {} files ({}), {} directories, {} hardlinks, {} symlinks, {} special files",
            req.fs,
            req.image,
            req.target.display(),
            report.files,
            ferry_image::progress::size(report.bytes),
            report.dirs,
            report.hardlinks,
            report.symlinks,
            report.specials
        );
    }
    if report.error_count > 0 {
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        bail!(
            "{} entries were not restored correctly (the first {} are listed above)",
            report.error_count,
            report.errors.len()
        );
    }
    Ok(())
}

/// `ferry-agent images`: what the library holds.
pub fn images(lib: &Library, json: bool) -> Result<()> {
    let images = lib.images()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    print!("{}", ferry_image::library::table(&images));
    Ok(())
}
