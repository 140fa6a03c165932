//! Deploying an image onto a target from the ramdisk: the storage layout first
//! (`storage`), then restore, the migrated system's configuration (`configure`)
//! and its drivers, initramfs and boot loader (`boot`). [`run`] carries a plan
//! through every step, reporting each, and wipes the new partition tables when a
//! step fails so a half-written disk never boots.

pub mod boot;
pub mod configure;
pub mod storage;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ferry_image::{Library, Meter, RestoreRequest};
use ferry_model::deploy::{DeployPlan, SourceFs, StepTime};
use ferry_model::image::Manifest;

use crate::survey::Host;
use storage::{Made, Mounts};

/// Where the target's filesystems are mounted in the ramdisk.
pub const TARGET: &str = "/mnt/ferry-target";

/// What a deploy did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deployed {
    /// The capture deployed.
    pub capture: String,
    /// The steps, in order, with their times.
    pub steps: Vec<StepTime>,
    /// Files and bytes restored per filesystem (source path, files, bytes).
    pub restored: Vec<(String, u64, u64)>,
    /// Driver modules added to the migrated kernel.
    pub drivers_added: Vec<String>,
}

/// Checks `plan` against the image it restores; every problem, or nothing.
pub fn check(plan: &DeployPlan, manifest: &Manifest) -> Result<()> {
    let problems = plan.validate(&SourceFs::of(manifest));
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "deploy plan for image {}: refused before any disk was touched:\n  - {}",
        plan.image,
        problems.join("\n  - ")
    )
}

/// Carries out `plan` on `host` from `lib`: checks it, lays out the storage,
/// restores, configures, makes it boot, unmounts. On failure, the new partition
/// tables are wiped (unless the plan keeps them) and the error names the step.
///
/// A plan that follows its capture (`follow_secs`) starts from the capture's first
/// partial manifest (its layout and survey) and restores each filesystem as soon as
/// the capture has written it.
pub fn run(host: &Host, lib: &Library, plan: &DeployPlan, meter: &Arc<Meter>) -> Result<Deployed> {
    let manifest = match (plan.follow_secs, plan.capture.as_deref()) {
        (Some(secs), Some(at)) => {
            meter.phase("deploy: waiting for the capture to begin", None);
            lib.manifest_following(&plan.image, at, Duration::from_secs(secs))
        }
        _ => lib.manifest(&plan.image, plan.capture.as_deref()),
    }
    .with_context(|| format!("reading image {}", plan.image))?;
    check(plan, &manifest)?;
    // Every disk must be the planned one before any is touched (and a refused disk
    // is not wiped as a failed deploy's would be).
    storage::check_disks(host, &plan.storage)?;
    storage::check_free(host, &plan.storage)?;
    let mut done = Deployed {
        capture: manifest.capture.clone(),
        ..Default::default()
    };
    let result = steps(host, lib, plan, &manifest, meter, &mut done);
    match result {
        Ok(()) => Ok(done),
        Err(e) if plan.keep_on_failure => {
            Err(e.context("the disks were kept as they are (keep_on_failure)"))
        }
        Err(e) => match storage::wipe_after_failure(host, &plan.storage) {
            Ok(()) => Err(e.context("the new partition tables were wiped; the disks do not boot")),
            Err(w) => Err(e.context(format!("{w:#}"))),
        },
    }
}

/// Runs `step` as the next reported step.
fn step<T>(
    done: &mut Deployed,
    meter: &Meter,
    name: &str,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    meter
        .check()
        .with_context(|| format!("before step {name}"))?;
    meter.phase(&format!("deploy: {name}"), None);
    let start = Instant::now();
    let out = f().with_context(|| format!("step {name}"))?;
    done.steps.push(StepTime {
        step: name.to_string(),
        millis: start.elapsed().as_millis() as u64,
    });
    tracing::info!(
        "deploy: {name} done in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(out)
}

fn steps(
    host: &Host,
    lib: &Library,
    plan: &DeployPlan,
    manifest: &Manifest,
    meter: &Arc<Meter>,
    done: &mut Deployed,
) -> Result<()> {
    let s = &plan.storage;
    step(done, meter, "wipe", || storage::wipe(host, s))?;
    step(done, meter, "partition", || storage::partition(host, s))?;
    step(done, meter, "raid", || storage::raid(host, s))?;
    step(done, meter, "lvm", || storage::lvm(host, s))?;
    let made = step(done, meter, "filesystems", || {
        storage::make_filesystems(host, s)
    })?;
    let mut mounts = Mounts::new(host, TARGET);
    // Each filesystem is restored right after it is mounted, before the ones below
    // it are mounted over its (restored) mount points.
    let restored = step(done, meter, "restore", || {
        let mut restored = Vec::new();
        for m in storage::mount_order(&made) {
            let at = mounts.mount(m)?;
            let Some(source) = &m.fs.source else { continue };
            let req = RestoreRequest {
                image: plan.image.clone(),
                at: Some(manifest.capture.clone()),
                fs: source.clone(),
                target: at,
                overwrite: false,
                follow: plan.follow_secs.map(Duration::from_secs),
            };
            let report = ferry_image::restore(lib, &req, meter)?;
            if report.error_count > 0 {
                bail!(
                    "restoring {source}: {} entries failed: {}",
                    report.error_count,
                    report.errors.join("; ")
                );
            }
            restored.push((source.clone(), report.files, report.bytes));
        }
        Ok(restored)
    })?;
    done.restored = restored;
    let root = mounts.at("/");
    step(done, meter, "configure", || {
        configure(host, plan, manifest, &made, &root)
    })?;
    step(done, meter, "chroot", || mounts.bind_system())?;
    let added = step(done, meter, "drivers", || drivers(host, plan, &root))?;
    done.drivers_added = added;
    step(done, meter, "software", || software(host, plan, &root))?;
    step(done, meter, "boot loader", || {
        boot::install_grub(host, &root, plan)
    })?;
    step(done, meter, "scripts", || scripts(host, plan, &root))?;
    step(done, meter, "unmount", || {
        let _ = tool(host, "sync", &[]);
        mounts.unmount()
    })?;
    Ok(())
}

/// Runs `name args` on `host`; the error names the command and what it said.
pub(crate) fn tool(host: &Host, name: &str, args: &[&str]) -> Result<String> {
    host.tool(name, args).map_err(|e| anyhow!(e))
}

/// Writes `text` at `path` of the migrated system at `root`, with `mode`.
pub(crate) fn put(root: &Path, path: &str, mode: u32, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let file = root.join(path.trim_start_matches('/'));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&file, text).with_context(|| format!("writing {path}"))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {path}"))
}

/// Reads `path` of the migrated system; empty when absent.
pub(crate) fn get(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path.trim_start_matches('/'))).unwrap_or_default()
}

/// The source's network configuration files, moved into a `ferry-old` folder next
/// to them (none of the systems reads subfolders), so only Ferry's apply.
fn set_aside(root: &Path, files: &[String]) -> Result<()> {
    for f in files {
        let from = root.join(f.trim_start_matches('/'));
        let (Some(dir), Some(name)) = (from.parent(), from.file_name()) else {
            continue;
        };
        if !from.is_file() {
            continue;
        }
        let old = dir.join("ferry-old");
        std::fs::create_dir_all(&old).with_context(|| format!("creating {}", old.display()))?;
        std::fs::rename(&from, old.join(name)).with_context(|| format!("setting {f} aside"))?;
    }
    Ok(())
}

/// fstab, host name, arrays, network, resolvers and injected files.
fn configure(
    host: &Host,
    plan: &DeployPlan,
    manifest: &Manifest,
    made: &[Made],
    root: &Path,
) -> Result<()> {
    put(
        root,
        "/etc/fstab",
        0o644,
        &configure::fstab(&get(root, "/etc/fstab"), made),
    )?;
    put(
        root,
        "/etc/hostname",
        0o644,
        &format!("{}\n", plan.hostname),
    )?;
    put(
        root,
        "/etc/hosts",
        0o644,
        &configure::hosts(&get(root, "/etc/hosts"), &manifest.hostname, &plan.hostname),
    )?;
    if !plan.storage.md.is_empty() {
        let scan = tool(host, "mdadm", &["--detail", "--scan"])?;
        let path = if root.join("etc/mdadm").is_dir() {
            "/etc/mdadm/mdadm.conf"
        } else {
            "/etc/mdadm.conf"
        };
        put(
            root,
            path,
            0o644,
            &configure::mdadm_conf(&get(root, path), &scan),
        )?;
    }
    let network = manifest.survey.as_deref().map(|s| &s.os.network);
    let systems: Vec<String> = network
        .map(|n| {
            n.managed_by
                .iter()
                .filter(|m| m.enabled)
                .map(|m| m.system.clone())
                .collect()
        })
        .unwrap_or_default();
    let old: Vec<String> = network
        .map(|n| n.managed_by.iter().flat_map(|m| m.files.clone()).collect())
        .unwrap_or_default();
    set_aside(root, &old)?;
    for f in configure::network_files(&plan.network, &systems) {
        put(root, &f.path, f.mode, &f.content)?;
    }
    let resolv = root.join("etc/resolv.conf");
    let is_link = std::fs::symlink_metadata(&resolv).is_ok_and(|m| m.file_type().is_symlink());
    if let Some(text) = configure::resolv_conf(&plan.network.dns)
        && !is_link
    {
        put(root, "/etc/resolv.conf", 0o644, &text)?;
    }
    // LVM's devices file (RHEL 9) lists the source's disks only: without it, LVM
    // scans every disk, these ones included.
    let devices = root.join("etc/lvm/devices/system.devices");
    if devices.exists() {
        std::fs::rename(&devices, devices.with_extension("devices.ferry-old"))
            .context("setting LVM's devices file aside")?;
    }
    for f in &plan.inject.files {
        put(root, &f.path, f.mode, &f.content)?;
    }
    Ok(())
}

/// The target disks' drivers into every kernel of the migrated system, and its
/// initramfs rebuilt with them; the modules added.
fn drivers(host: &Host, plan: &DeployPlan, root: &Path) -> Result<Vec<String>> {
    let mut modules: Vec<String> = plan.drivers.modules.clone();
    for d in &plan.storage.disks {
        for m in boot::disk_modules(host, &d.disk) {
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
    }
    let tools = boot::storage_tools(plan);
    boot::check_tools(root, &tools)?;
    let mut added = Vec::new();
    for v in boot::kernels(root) {
        added.extend(boot::inject_drivers(
            host,
            root,
            &v,
            &modules,
            plan.drivers.library.as_deref(),
        )?);
    }
    boot::regenerate_initramfs(host, root, &modules, &tools)?;
    Ok(added)
}

/// Where Debian's invoke-rc.d asks whether a service may start.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The plan's package files, installed with the migrated system's package tool.
fn software(host: &Host, plan: &DeployPlan, root: &Path) -> Result<()> {
    for p in &plan.inject.packages {
        let name = Path::new(p)
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("package {p}: not a file name"))?;
        let inside = format!("/tmp/{name}");
        std::fs::copy(p, root.join(inside.trim_start_matches('/')))
            .with_context(|| format!("copying package {p} into the migrated system"))?;
        let tool: &[&str] = if name.ends_with(".deb") {
            &["dpkg", "-i"]
        } else if name.ends_with(".rpm") {
            &["rpm", "-U", "--replacepkgs"]
        } else {
            bail!("package {p}: neither .deb nor .rpm");
        };
        let mut args = tool.to_vec();
        args.push(&inside);
        // Package scripts must not start services in the ramdisk (they would keep
        // the target busy): policy-rc.d says no while packages are installed.
        put(root, POLICY_RC_D, 0o755, "#!/bin/sh\nexit 101\n")?;
        let installed = boot::chroot(host, root, &args);
        let _ = std::fs::remove_file(root.join(POLICY_RC_D.trim_start_matches('/')));
        let _ = std::fs::remove_file(root.join(inside.trim_start_matches('/')));
        installed.with_context(|| format!("installing package {name}"))?;
    }
    Ok(())
}

/// The plan's scripts, in order, in the migrated system.
fn scripts(host: &Host, plan: &DeployPlan, root: &Path) -> Result<()> {
    for (i, s) in plan.scripts.iter().enumerate() {
        let inside = format!("/tmp/ferry-script-{i}");
        put(root, &inside, 0o700, &s.content)?;
        let ran = boot::chroot(host, root, &["/bin/sh", &inside]);
        let _ = std::fs::remove_file(root.join(inside.trim_start_matches('/')));
        ran.with_context(|| format!("script {}", s.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_image::{CaptureRequest, FsSource, Location};
    use ferry_model::deploy::examples::plan;
    use std::sync::Mutex;

    /// A plan that does not fit the image is refused before any tool runs, naming
    /// each problem.
    #[test]
    fn an_impossible_plan_touches_no_disk() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc"))?;
        std::fs::write(tree.join("etc/hostname"), "web1\n")?;
        let lib = Library::connect(
            &Location::parse(&dir.path().join("lib").to_string_lossy())?,
            "pw",
        )?;
        lib.init()?;
        let req = CaptureRequest {
            image: "web1".into(),
            filesystems: vec![FsSource {
                path: "/".into(),
                read_from: tree,
                ..Default::default()
            }],
            ..Default::default()
        };
        ferry_image::capture(&lib, &req, &Meter::silent())?;
        let calls = Arc::new(Mutex::new(Vec::<String>::new()));
        let log = calls.clone();
        let host = Host::new(
            dir.path(),
            Box::new(move |name: &str, _: &[&str]| {
                log.lock()
                    .map_err(|e| e.to_string())?
                    .push(name.to_string());
                Ok(String::new())
            }),
        );
        let mut p = plan();
        p.storage.disks[0].size_bytes = 300 << 20;
        let err = format!(
            "{:#}",
            run(&host, &lib, &p, &Meter::silent()).expect_err("refused")
        );
        assert!(err.contains("refused before any disk was touched"), "{err}");
        assert!(err.contains("disk vda: does not fit"), "{err}");
        assert!(
            err.contains("the image has no filesystem /boot (it has /)"),
            "{err}"
        );
        assert!(calls.lock().map_err(|e| anyhow!("{e}"))?.is_empty());
        Ok(())
    }
}
