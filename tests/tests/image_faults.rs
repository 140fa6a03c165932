//! Image library faults: a wrong key, a missing library, a damaged pack, a target
//! that is too small, and a capture killed halfway.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_image::{CaptureRequest, FsSource, Library, Location, Meter, RestoreRequest};
use ferry_model::image::Consistency;
use ferry_tests::fidelity::{LoopFs, can_run, random_tree};
use ferry_tests::procs::{Proc, bin};
use ferry_tests::util::missing;

const PASSWORD: &str = "pw-for-faults";

fn location(dir: &Path) -> Location {
    Location::parse_url(dir.join("library").to_str().expect("utf-8")).expect("location")
}

fn request(image: &str, from: &Path) -> CaptureRequest {
    CaptureRequest {
        image: image.into(),
        filesystems: vec![FsSource {
            path: "/".into(),
            read_from: from.to_path_buf(),
            consistency: Consistency::Live,
            fstype: None,
            ..Default::default()
        }],
        hostname: "faults".into(),
        ..Default::default()
    }
}

fn restore_into(
    lib: &Library,
    image: &str,
    to: &Path,
) -> anyhow::Result<ferry_image::RestoreReport> {
    ferry_image::restore(
        lib,
        &RestoreRequest {
            image: image.into(),
            at: None,
            fs: "/".into(),
            target: to.to_path_buf(),
            overwrite: false,
            follow: None,
        },
        &Meter::silent(),
    )
}

/// Every pack file of a folder library, largest first.
fn packs(library: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(library.join("data"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for p in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            // A pack being written when the capture was killed is a temp file, not a pack.
            if p.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            let len = p.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((p.path(), len));
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.1));
    out
}

/// A scratch folder with an empty library in it, and where to put a source tree.
fn new_library() -> (tempfile::TempDir, Library, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let lib = Library::connect(&location(dir.path()), PASSWORD).expect("connect");
    lib.init().expect("init");
    let tree = dir.path().join("tree");
    (dir, lib, tree)
}

#[test]
fn wrong_key_missing_library_and_bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = location(dir.path());
    let missing_lib = Library::connect(&loc, PASSWORD).expect("connect");
    let e = missing_lib
        .images()
        .expect_err("no library yet")
        .to_string();
    assert!(e.contains("there is no library there"), "{e}");
    missing_lib.init().expect("init");
    let e = missing_lib.init().expect_err("init twice").to_string();
    assert!(e.contains("one exists there already"), "{e}");
    let wrong = Library::connect(&loc, "not the password").expect("connect");
    // A library that is there is left alone, whoever asks; opening it is what fails.
    assert!(!wrong.ensure().expect("ensure over a library"));
    let e = wrong.images().expect_err("wrong key").to_string();
    assert!(e.contains("the password does not open it"), "{e}");
    let e = Library::connect(&loc, "")
        .err()
        .expect("empty password")
        .to_string();
    assert!(e.contains("password is empty"), "{e}");
    let lib = Library::connect(&loc, PASSWORD).expect("connect");
    let tree = dir.path().join("tree");
    random_tree(&tree, 2, 1000);
    let e = ferry_image::capture(&lib, &request("bad/name", &tree), &Meter::silent())
        .expect_err("bad name")
        .to_string();
    assert!(e.contains("is not an image name"), "{e}");
    ferry_image::capture(&lib, &request("ok", &tree), &Meter::silent()).expect("capture");
    let to = dir.path().join("to");
    std::fs::create_dir_all(&to).expect("mkdir");
    let e = restore_into(&lib, "absent", &to)
        .expect_err("absent image")
        .to_string();
    assert!(e.contains("image absent: not in library"), "{e}");
    std::fs::write(to.join("stray"), b"x").expect("write");
    let e = restore_into(&lib, "ok", &to)
        .expect_err("non-empty target")
        .to_string();
    assert!(e.contains("not empty") && e.contains("stray"), "{e}");
    let e = restore_into(&lib, "ok", &to.join("stray"))
        .expect_err("a file")
        .to_string();
    assert!(e.contains("not a directory"), "{e}");
}

#[test]
fn a_flipped_byte_in_a_pack_fails_restore_and_check_naming_the_pack() {
    let (dir, lib, tree) = new_library();
    random_tree(&tree, 6, 3 << 20);
    ferry_image::capture(&lib, &request("img", &tree), &Meter::silent()).expect("capture");
    let clean = lib.check(Some("img"), true).expect("check");
    assert!(clean.errors.is_empty(), "{:?}", clean.errors);
    let (pack, len) = packs(&dir.path().join("library"))[0].clone();
    let pack_id = pack
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let mut bytes = std::fs::read(&pack).expect("read pack");
    bytes[len as usize / 2] ^= 0x40;
    std::fs::write(&pack, bytes).expect("damage pack");

    let to = dir.path().join("to");
    std::fs::create_dir_all(&to).expect("mkdir");
    let r = restore_into(&lib, "img", &to).expect("restore runs to the end");
    assert!(r.error_count >= 1, "{r:?}");
    assert!(
        r.errors.iter().all(|e| e.contains(&pack_id)),
        "every failure names pack {pack_id}: {:?}",
        r.errors
    );
    assert_eq!(r.files + r.error_count, 6, "{r:?}");
    // What is reported restored is whole.
    let good = std::fs::read_dir(&to)
        .expect("list")
        .flatten()
        .filter(|e| std::fs::read(e.path()).ok() == std::fs::read(tree.join(e.file_name())).ok())
        .count();
    assert!(
        good as u64 >= r.files,
        "{good} whole files, {} reported",
        r.files
    );

    let damaged = lib.check(Some("img"), true).expect("check runs");
    assert!(
        damaged.errors.iter().any(|e| e.contains(&pack_id[..8])),
        "check names pack {pack_id}: {:?}",
        damaged.errors
    );
}

#[test]
fn a_target_that_is_too_small_is_a_clear_error() {
    if let Some(what) = can_run() {
        return missing(&what);
    }
    let (dir, lib, tree) = new_library();
    random_tree(&tree, 8, 4 << 20);
    ferry_image::capture(&lib, &request("big", &tree), &Meter::silent()).expect("capture");
    let small = LoopFs::new(dir.path(), "small", "ext4", 16 << 20).expect("small fs");
    let e = restore_into(&lib, "big", &small.mnt)
        .expect_err("does not fit")
        .to_string();
    assert!(e.contains("too small"), "{e}");
}

#[test]
fn a_capture_killed_halfway_uploads_only_what_is_missing_when_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let library = dir.path().join("library");
    let tree = dir.path().join("tree");
    let (files, size) = (24, 8 << 20);
    random_tree(&tree, files, size);
    let total = (files * size) as u64;
    let password = dir.path().join("pw");
    std::fs::write(&password, PASSWORD).expect("password file");
    let mut cmd = Command::new(bin("ferry-agent"));
    cmd.args([
        "capture",
        "--init",
        "--live",
        "--image",
        "resume",
        "--library",
    ])
    .arg(&library)
    .arg("--password-file")
    .arg(&password)
    .arg(&tree);
    let mut agent =
        Proc::spawn("capture", &mut cmd, &dir.path().join("capture.log")).expect("spawn");
    let uploaded = agent.wait_until("a third uploaded", Duration::from_secs(120), |_| {
        let bytes: u64 = packs(&library).iter().map(|p| p.1).sum();
        (bytes >= total / 3).then_some(bytes)
    });
    agent.kill_hard();
    let lib = Library::connect(&location(dir.path()), PASSWORD).expect("connect");
    assert!(
        lib.images().expect("images").is_empty(),
        "an unfinished capture is not an image"
    );
    let present: u64 = packs(&library).iter().map(|p| p.1).sum();
    assert!(present >= uploaded);
    let m = ferry_image::capture(&lib, &request("resume", &tree), &Meter::silent()).expect("again");
    let added = m.filesystems[0].added_bytes;
    // Random data packs at about its own size: what was there is not sent again.
    assert!(
        added + present * 9 / 10 <= total + (1 << 20),
        "{added} bytes added after {present} were present, of {total}"
    );
    let to = dir.path().join("to");
    std::fs::create_dir_all(&to).expect("mkdir");
    let r = restore_into(&lib, "resume", &to).expect("restore");
    assert_eq!((r.files, r.error_count), (files as u64, 0), "{r:?}");
    assert!(
        lib.check(Some("resume"), true)
            .expect("check")
            .errors
            .is_empty()
    );
}
