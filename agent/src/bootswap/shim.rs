//! `init`: for a server its hypervisor starts without a boot loader (a direct kernel
//! boot), there is no boot entry to add; the kernel always starts `/sbin/init` from
//! the server's disk. So the agent puts itself there for one boot: `/sbin/init`
//! becomes a link to a copy of the (static) agent, the original kept beside it. At
//! boot the shim first puts the original back — any later reset boots the server's
//! own system — then unpacks the ramdisk into memory, makes it the root, lets go of
//! the disk and starts the ramdisk's init. If the ramdisk cannot be read it starts
//! the original init instead, and the server boots as before.
//!
//! Every step on disk keeps `/sbin/init` present: the original is hard-linked to its
//! saved name and the link to the shim renamed over it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::write_synced;
use crate::ramdisk::say;

/// What the shim is to do, on the server's root filesystem.
pub const PLAN_PATH: &str = "/etc/ferry/init-shim.json";
/// The init the kernel starts.
const INIT: &str = "/sbin/init";
/// Where the original init is kept meanwhile.
const SAVED: &str = "/sbin/init.ferry-saved";
/// The copy of the agent the kernel starts instead (on the root filesystem: nothing
/// else is mounted when it starts).
const SHIM: &str = "/.ferry-init";
/// The ramdisk, on the root filesystem.
const RAMDISK: &str = "/.ferry-ramdisk.img";
/// The folder the ramdisk is unpacked into (a tmpfs mounted there).
const NEW_ROOT: &str = "/.ferry-root";

/// The shim's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The init the kernel starts.
    pub init: PathBuf,
    /// Where its original is kept.
    pub saved: PathBuf,
    /// The ramdisk.
    pub ramdisk: PathBuf,
}

/// Why the init cannot be replaced here, if it cannot.
pub fn problem() -> Option<String> {
    if !cfg!(target_env = "musl") {
        return Some(
            "this agent is not the static build, and the init shim runs before any library is there".into(),
        );
    }
    if std::fs::symlink_metadata(INIT).is_err() {
        return Some(format!("{INIT} is missing"));
    }
    if std::fs::symlink_metadata(SAVED).is_ok() {
        return Some(format!(
            "{SAVED} is left from an earlier attempt; check that {INIT} is the system's own init, then delete {SAVED}"
        ));
    }
    match nix::sys::statvfs::statvfs("/") {
        Ok(s) if s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) => {
            Some("the root filesystem is mounted read-only".into())
        }
        Ok(_) => None,
        Err(e) => Some(format!("cannot look at the root filesystem: {e}")),
    }
}

/// Whether this process, as PID 1, is the shim (the plan is there and this is not the
/// ramdisk).
pub fn planned() -> bool {
    Path::new(PLAN_PATH).exists() && !Path::new(ferry_initramfs::info::INFO_PATH).exists()
}

/// Puts the shim in place for the next boot. The server's own init stays reachable at
/// every moment.
pub fn install(ramdisk: &[u8], _state_dir: &Path) -> Result<()> {
    if let Some(p) = problem() {
        bail!("the init shim cannot be installed: {p}");
    }
    write_synced(Path::new(RAMDISK), ramdisk, 0o600)?;
    let me = std::fs::read("/proc/self/exe").context("reading this agent's own binary")?;
    write_synced(Path::new(SHIM), &me, 0o700)?;
    let plan = Plan {
        init: INIT.into(),
        saved: SAVED.into(),
        ramdisk: RAMDISK.into(),
    };
    if let Some(dir) = Path::new(PLAN_PATH).parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_synced(
        Path::new(PLAN_PATH),
        &serde_json::to_vec_pretty(&plan)?,
        0o600,
    )?;
    std::fs::hard_link(INIT, SAVED).with_context(|| format!("keeping {INIT} as {SAVED}"))?;
    let new = format!("{INIT}.ferry-new");
    let _ = std::fs::remove_file(&new);
    std::os::unix::fs::symlink(SHIM, &new).with_context(|| format!("making {new}"))?;
    std::fs::rename(&new, INIT).with_context(|| format!("putting the shim at {INIT}"))?;
    nix::unistd::sync();
    super::reboot(false)
}

/// Takes the shim out again (the reboot did not happen): the original init back.
pub fn uninstall() -> Vec<String> {
    let mut done = Vec::new();
    if std::fs::symlink_metadata(SAVED).is_ok() && std::fs::rename(SAVED, INIT).is_ok() {
        done.push(format!("{INIT} put back"));
    }
    for f in [PLAN_PATH, SHIM, RAMDISK] {
        if std::fs::remove_file(f).is_ok() {
            done.push(f.to_string());
        }
    }
    let _ = std::fs::remove_dir(NEW_ROOT);
    done
}

/// PID 1 on the server's disk: put the original init back, enter the ramdisk; if the
/// ramdisk cannot be entered, start the original init. Never returns.
pub fn run() -> ! {
    let plan: Option<Plan> = std::fs::read(PLAN_PATH)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let init = plan
        .as_ref()
        .map_or(PathBuf::from(INIT), |p| p.init.clone());
    // The root is often mounted read-only at this point.
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        None::<&str>,
    );
    let Some(plan) = plan else {
        say(&format!(
            "{PLAN_PATH} is unreadable; starting the system's own init"
        ));
        start(&init);
    };
    if let Err(e) = std::fs::rename(&plan.saved, &plan.init) {
        say(&format!(
            "cannot put {} back from {}: {e}; starting it from there",
            plan.init.display(),
            plan.saved.display()
        ));
        start(&plan.saved);
    }
    let _ = std::fs::remove_file(PLAN_PATH);
    let _ = std::fs::remove_file(SHIM);
    nix::unistd::sync();
    say("the system's own init is back in place; entering the Ferry ramdisk");
    let ramdisk = match std::fs::read(&plan.ramdisk)
        .map_err(|e| e.to_string())
        .and_then(|b| ferry_initramfs::cpio::read(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            say(&format!(
                "cannot read the ramdisk {}: {e}; starting the system's own init",
                plan.ramdisk.display()
            ));
            start(&plan.init);
        }
    };
    let _ = std::fs::remove_file(&plan.ramdisk);
    nix::unistd::sync();
    if let Err(e) = enter(&ramdisk) {
        say(&format!(
            "cannot enter the ramdisk: {e:#}; starting the system's own init"
        ));
        start(&plan.init);
    }
    // The old root is let go of: only the ramdisk's init is left to start.
    start(Path::new("/init"));
}

/// Unpacks the ramdisk into a tmpfs and makes it the root; the disk is let go of.
fn enter(ramdisk: &ferry_initramfs::cpio::Archive) -> Result<()> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    std::fs::create_dir_all(NEW_ROOT)?;
    mount(
        Some("tmpfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .context("mounting a tmpfs for the ramdisk")?;
    ramdisk
        .unpack_to(Path::new(NEW_ROOT))
        .context("unpacking the ramdisk")?;
    let old = Path::new(NEW_ROOT).join("oldroot");
    std::fs::create_dir_all(&old)?;
    nix::unistd::pivot_root(NEW_ROOT, &old).context("making the ramdisk the root")?;
    std::env::set_current_dir("/")?;
    umount2("/oldroot", MntFlags::MNT_DETACH).context("letting go of the disk")?;
    let _ = std::fs::remove_dir("/oldroot");
    Ok(())
}

/// Replaces this process (PID 1) with `init`; if that fails, with the system's own
/// init, then a reboot.
fn start(init: &Path) -> ! {
    for path in [init, Path::new(INIT)] {
        if let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) {
            let e = nix::unistd::execv(&c, std::slice::from_ref(&c));
            say(&format!("cannot start {}: {e:?}", path.display()));
        }
    }
    let e = crate::ramdisk::sys::power(true);
    say(&format!("reboot failed: {e}"));
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
