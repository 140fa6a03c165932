//! Unchanged re-capture keeps the parent snapshot's tree, and every kind of change
//! — content with its old mtime put back, mode, owner, xattr, a new hardlink, a
//! rename, an added or removed entry — is seen and captured. Tree ids are read
//! with the stock `restic` client.

use std::path::Path;
use std::process::Command;

use ferry_image::{CaptureRequest, FsSource, Library, Location, Meter, RestoreRequest};
use ferry_tests::fidelity::{can_run, compare, restic, sh};
use ferry_tests::util::missing;

const PASSWORD: &str = "pw-for-recapture";

/// One change made to the tree.
type Change<'a> = Box<dyn Fn() + 'a>;

fn capture(lib: &Library, tree: &Path) -> String {
    let req = CaptureRequest {
        image: "again".into(),
        filesystems: vec![FsSource {
            path: "/srv/data".into(),
            read_from: tree.to_path_buf(),
            ..Default::default()
        }],
        hostname: "recapture".into(),
        ..Default::default()
    };
    let m = ferry_image::capture(lib, &req, &Meter::silent()).expect("capture");
    m.filesystems[0].snapshot.clone()
}

/// The tree id of snapshot `id`, as restic sees it.
fn tree_of(library: &Path, id: &str) -> String {
    let out =
        sh(restic(library, PASSWORD).args(["cat", "snapshot", id])).expect("restic cat snapshot");
    let v: serde_json::Value = serde_json::from_str(&out).expect("snapshot json");
    v["tree"].as_str().expect("tree").to_string()
}

#[test]
fn an_unchanged_tree_keeps_its_tree_and_every_change_is_seen() {
    if let Some(m) = can_run() {
        return missing(&m);
    }
    if !Path::new("/usr/bin/restic").exists() {
        return missing("restic");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    let sub = tree.join("etc/app");
    std::fs::create_dir_all(&sub).expect("mkdir");
    for i in 0..50 {
        std::fs::write(sub.join(format!("conf{i}")), format!("setting {i}\n")).expect("write");
    }
    std::fs::write(tree.join("data.bin"), vec![7u8; 100_000]).expect("write");
    std::os::unix::fs::symlink("etc/app/conf1", tree.join("link")).expect("symlink");
    let library = dir.path().join("library");
    let loc = Location::parse_url(library.to_str().expect("utf-8")).expect("location");
    let lib = Library::connect(&loc, PASSWORD).expect("connect");
    lib.init().expect("init");

    let first = capture(&lib, &tree);
    let again = capture(&lib, &tree);
    assert_ne!(first, again, "a new snapshot each time");
    let mut last = tree_of(&library, &again);
    assert_eq!(tree_of(&library, &first), last, "unchanged: the same tree");

    let conf = sub.join("conf7");
    let changes: Vec<(&str, Change<'_>)> = vec![
        (
            "content, same size, old mtime put back",
            Box::new(|| {
                let old = std::fs::metadata(&conf)
                    .expect("stat")
                    .modified()
                    .expect("mtime");
                std::fs::write(&conf, b"setting X\n").expect("write");
                std::fs::File::options()
                    .write(true)
                    .open(&conf)
                    .and_then(|f| f.set_modified(old))
                    .expect("mtime back");
            }),
        ),
        (
            "mode",
            Box::new(|| {
                sh(Command::new("chmod").arg("0600").arg(sub.join("conf8"))).expect("chmod");
            }),
        ),
        (
            "owner",
            Box::new(|| {
                sh(Command::new("chown")
                    .arg("1234:1234")
                    .arg(sub.join("conf9")))
                .expect("chown");
            }),
        ),
        (
            "xattr",
            Box::new(|| {
                xattr::set(sub.join("conf10"), "user.note", b"x").expect("setxattr");
            }),
        ),
        (
            "new hardlink",
            Box::new(|| {
                std::fs::hard_link(sub.join("conf11"), tree.join("conf11-link")).expect("link");
            }),
        ),
        (
            "rename",
            Box::new(|| {
                std::fs::rename(sub.join("conf12"), sub.join("conf12-renamed")).expect("rename");
            }),
        ),
        (
            "removed",
            Box::new(|| std::fs::remove_file(sub.join("conf13")).expect("rm")),
        ),
        (
            "added, empty",
            Box::new(|| std::fs::write(sub.join("new"), b"").expect("write")),
        ),
    ];
    for (what, change) in &changes {
        change();
        let id = capture(&lib, &tree);
        let now = tree_of(&library, &id);
        assert_ne!(now, last, "{what}: not seen");
        last = now;
    }
    // The last capture, restored, is the tree as it is now.
    let to = dir.path().join("restored");
    std::fs::create_dir_all(&to).expect("mkdir");
    let r = ferry_image::restore(
        &lib,
        &RestoreRequest {
            image: "again".into(),
            at: None,
            fs: "/srv/data".into(),
            target: to.clone(),
            overwrite: false,
            follow: None,
        },
        &Meter::silent(),
    )
    .expect("restore");
    assert_eq!(r.error_count, 0, "{r:?}");
    let diffs = compare(&tree, &to).expect("compare");
    let diffs: Vec<&String> = diffs.iter().filter(|d| !d.contains("atime")).collect();
    assert!(diffs.is_empty(), "{diffs:#?}");
}

/// Ferry cuts files into the same chunks as the stock restic: restic, backing up
/// what Ferry captured into the same library, finds every data blob there.
#[test]
fn restic_finds_every_chunk_of_a_ferry_capture() {
    if !Path::new("/usr/bin/restic").exists() {
        return missing("restic");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).expect("mkdir");
    // Big enough for content-defined cuts (chunks are 512 KiB to 8 MiB), and many
    // small files besides.
    std::fs::write(tree.join("big"), ferry_tests::fidelity::bytes(11, 24 << 20)).expect("write");
    for i in 0..200 {
        std::fs::write(tree.join(format!("small{i}")), format!("{i}").repeat(i + 1))
            .expect("write");
    }
    let library = dir.path().join("library");
    let loc = Location::parse_url(library.to_str().expect("utf-8")).expect("location");
    let lib = Library::connect(&loc, PASSWORD).expect("connect");
    lib.init().expect("init");
    capture(&lib, &tree);
    let out = sh(restic(&library, PASSWORD)
        .args(["backup", "--json"])
        .arg(&tree))
    .expect("restic backup");
    let summary: serde_json::Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message_type"] == "summary")
        .expect("restic summary");
    assert_eq!(
        summary["data_blobs"], 0,
        "restic had to add data: {summary}"
    );
    assert!(
        summary["total_bytes_processed"].as_u64() > Some(24 << 20),
        "{summary}"
    );
}
