//! Freeze-bounded capture on the host: a filesystem that cannot be snapshotted
//! (ext4 on a loop device) is frozen exactly while `ferry-agent capture --freeze`
//! reads it; writers wait for the thaw; the bound holds even when the agent is
//! killed; filesystems the capture itself writes to are never frozen.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_image::{Library, Location};
use ferry_model::image::Consistency;
use ferry_tests::fidelity::{LoopFs, can_run, random_tree};
use ferry_tests::procs::{Proc, bin};
use ferry_tests::util::missing;

const PASSWORD: &str = "pw-for-freeze";

/// Thaws the filesystem at `0` when dropped, so that a failed test leaves nothing
/// frozen behind (the thaw fails harmlessly when it is not frozen).
struct Thaw(PathBuf);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).output();
    }
}

/// Dropped in this order: thaw, unmount, remove the folder.
struct Setup {
    _thaw: Thaw,
    fs: LoopFs,
    dir: tempfile::TempDir,
}

/// An ext4 filesystem holding `files` random files of 1 MiB.
fn setup(files: usize) -> Option<Setup> {
    if let Some(m) = can_run() {
        missing(&m);
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = LoopFs::new(dir.path(), "data", "ext4", 512 << 20).expect("loop fs");
    random_tree(&fs.mnt.join("tree"), files, 1 << 20);
    std::fs::write(dir.path().join("pw"), PASSWORD).expect("password file");
    let thaw = Thaw(fs.mnt.clone());
    Some(Setup {
        _thaw: thaw,
        fs,
        dir,
    })
}

/// Starts `ferry-agent capture --freeze SECS` of `paths` into `library`.
fn start_capture(s: &Setup, library: &Path, secs: u32, paths: &[&Path]) -> Proc {
    let mut cmd = Command::new(bin("ferry-agent"));
    cmd.args(["capture", "--init", "--image", "frozen", "--library"])
        .arg(library)
        .arg("--password-file")
        .arg(s.dir.path().join("pw"))
        .args(["--freeze", &secs.to_string()])
        .args(paths);
    Proc::spawn("capture", &mut cmd, &s.dir.path().join("capture.log")).expect("spawn")
}

/// Waits until the agent says it froze a filesystem.
fn wait_frozen(agent: &mut Proc) -> Instant {
    agent.wait_until("a freeze", Duration::from_secs(60), |p| {
        p.log().contains("frozen for at most").then(Instant::now)
    })
}

/// Writes `path` on a thread; the flag turns true once the write is through.
fn write_meanwhile(path: PathBuf) -> (Arc<AtomicBool>, std::thread::JoinHandle<Instant>) {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    let writer = std::thread::spawn(move || {
        std::fs::write(&path, b"written during the capture").expect("write");
        flag.store(true, Ordering::SeqCst);
        Instant::now()
    });
    (done, writer)
}

fn library(s: &Setup) -> Library {
    let loc = Location::parse_url(s.dir.path().join("library").to_str().expect("utf-8"))
        .expect("location");
    Library::connect(&loc, PASSWORD).expect("connect")
}

#[test]
fn a_filesystem_without_snapshots_is_frozen_while_read_and_writers_wait_for_the_thaw() {
    let Some(s) = setup(96) else { return };
    let lib_dir = s.dir.path().join("library");
    let mut agent = start_capture(&s, &lib_dir, 120, &[&s.fs.mnt]);
    wait_frozen(&mut agent);
    let late = s.fs.mnt.join("tree/late");
    let (done, writer) = write_meanwhile(late.clone());
    std::thread::sleep(Duration::from_millis(500));
    let still_reading = agent.try_wait().is_none();
    assert!(
        still_reading,
        "the capture must outlast the probe for this test to show anything: {}",
        agent.log()
    );
    assert!(
        !done.load(Ordering::SeqCst),
        "a write went through while the filesystem was being read frozen"
    );
    let status = agent.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "capture failed: {}", agent.log());
    writer.join().expect("writer");
    assert!(agent.log().contains("thawed"), "{}", agent.log());
    assert!(done.load(Ordering::SeqCst) && late.exists());

    let lib = library(&s);
    let m = lib.manifest("frozen", None).expect("manifest");
    assert_eq!(m.filesystems.len(), 1);
    assert_eq!(m.filesystems[0].consistency, Consistency::Frozen, "{m:?}");
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    // The image is the filesystem at the freeze: the 96 files, not the late one.
    let to = s.dir.path().join("restored");
    std::fs::create_dir_all(&to).expect("mkdir");
    let r = ferry_image::restore(
        &lib,
        &ferry_image::RestoreRequest {
            image: "frozen".into(),
            at: None,
            fs: s.fs.mnt.to_string_lossy().into(),
            target: to.clone(),
            overwrite: false,
            follow: None,
        },
        &ferry_image::Meter::silent(),
    )
    .expect("restore");
    assert_eq!(r.error_count, 0, "{r:?}");
    assert!(to.join("tree/f095").exists());
    assert!(!to.join("tree/late").exists(), "written after the freeze");
}

#[test]
fn the_freeze_bound_holds_also_when_the_agent_is_killed() {
    let Some(s) = setup(96) else { return };
    let mut agent = start_capture(&s, &s.dir.path().join("library"), 3, &[&s.fs.mnt]);
    let frozen = wait_frozen(&mut agent);
    agent.kill_hard();
    let (_, writer) = write_meanwhile(s.fs.mnt.join("after-kill"));
    // The watchdog, not the dead agent, thaws it: about 3 s after the freeze.
    let through = writer.join().expect("writer");
    let waited = through - frozen;
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(30),
        "the write waited {waited:?}"
    );
}

#[test]
fn a_capture_longer_than_the_bound_is_reported_live_and_the_library_disk_is_never_frozen() {
    let Some(s) = setup(160) else { return };
    // The library lives on a second filesystem, which is captured too.
    let other = LoopFs::new(s.dir.path(), "other", "ext4", 512 << 20).expect("loop fs");
    let _thaw = Thaw(other.mnt.clone());
    std::fs::write(other.mnt.join("note"), b"x").expect("write");
    let lib_dir = other.mnt.join("library");
    let mut agent = start_capture(&s, &lib_dir, 1, &[&s.fs.mnt, &other.mnt]);
    let status = agent.wait_exit(Duration::from_secs(300));
    assert!(status.success(), "capture failed: {}", agent.log());
    let loc = Location::parse_url(lib_dir.to_str().expect("utf-8")).expect("location");
    let lib = Library::connect(&loc, PASSWORD).expect("connect");
    let m = lib.manifest("frozen", None).expect("manifest");
    let data = &m.filesystems[0];
    assert_eq!(data.consistency, Consistency::Live, "{m:?}");
    let shown = s.fs.mnt.display().to_string();
    assert!(
        m.warnings
            .iter()
            .any(|w| w.starts_with(&shown) && w.contains("frozen only for its first 1 s")),
        "{:?}",
        m.warnings
    );
    assert_eq!(m.filesystems[1].consistency, Consistency::Live);
    assert!(
        m.warnings.iter().any(|w| w.contains(&format!(
            "it holds {}, which must stay writable",
            lib_dir.display()
        ))),
        "{:?}",
        m.warnings
    );
    std::fs::write(s.fs.mnt.join("after"), b"x").expect("thawed");
}
