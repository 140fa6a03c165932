//! The standalone image commands, for a rescue situation: capture this machine into
//! a library, restore a filesystem from one, list what a library holds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_image::{CaptureRequest, Library, Location, Meter, RestoreRequest};

/// Opens the library at `location` with the password in `password_file`.
pub fn connect(location: &str, password_file: &Path) -> Result<Library> {
    let password = std::fs::read_to_string(password_file)
        .with_context(|| format!("password file {}: cannot read it", password_file.display()))?;
    let password = password.trim_end_matches(['\n', '\r']);
    Library::connect(&Location::parse(location)?, password)
}

/// `ferry-agent capture`: the given mount points, each from a snapshot where one can be
/// taken. Prints the manifest (JSON) or a summary.
pub fn capture(
    lib: &Library,
    image: &str,
    paths: &[PathBuf],
    excludes: &[String],
    live: bool,
    init: bool,
    json: bool,
) -> Result<()> {
    if init && !lib.exists()? {
        lib.init()?;
    }
    let host = crate::survey::Host::live();
    let plan = crate::capture::plan(&host, paths, live)?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let survey = crate::survey::survey();
    let req = CaptureRequest {
        image: image.to_string(),
        filesystems: plan.sources.clone(),
        excludes: excludes.to_vec(),
        hostname: survey.hostname.clone(),
        survey: Some(survey),
        warnings: plan.warnings.clone(),
    };
    let meter = Meter::new(Duration::from_millis(250), None);
    let manifest = ferry_image::capture(lib, &req, &meter)?;
    drop(plan);
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
    for i in images {
        let fs: Vec<&str> = i
            .latest
            .filesystems
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        println!(
            "{:<20} {} capture(s), latest {} ({}) {}: {}",
            i.name,
            i.captures.len(),
            i.latest.capture,
            i.latest.finished,
            ferry_image::progress::size(i.latest.bytes()),
            fs.join(" ")
        );
    }
    Ok(())
}
