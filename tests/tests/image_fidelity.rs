//! Image fidelity: a generated tree holding every kind of entry and metadata is
//! captured from a loop-mounted ext4 and restored into fresh ext4 and xfs
//! filesystems; the comparator and `getfattr`, `getfacl`, `getcap` agree. The stock
//! `restic` client reads the same library.

use std::path::Path;

use ferry_image::{CaptureRequest, FsSource, Library, Location, Meter, RestoreRequest};
use ferry_model::image::Consistency;
use ferry_tests::fidelity::{LoopFs, can_run, compare, generate, sh, tool_views};
use ferry_tests::util::missing;

const PASSWORD: &str = "correct horse battery staple";

fn library(dir: &Path) -> Library {
    let loc = Location::parse_url(dir.join("library").to_str().expect("utf-8")).expect("location");
    let lib = Library::connect(&loc, PASSWORD).expect("connect");
    lib.init().expect("init");
    lib
}

fn capture_one(lib: &Library, image: &str, from: &Path) -> ferry_model::image::Manifest {
    let req = CaptureRequest {
        image: image.into(),
        filesystems: vec![FsSource {
            path: "/".into(),
            read_from: from.to_path_buf(),
            consistency: Consistency::Frozen,
            fstype: Some("ext4".into()),
            ..Default::default()
        }],
        hostname: "fidelity".into(),
        ..Default::default()
    };
    ferry_image::capture(lib, &req, &Meter::silent()).expect("capture")
}

#[test]
fn every_item_survives_capture_and_restore_to_ext4_and_xfs() {
    if let Some(what) = can_run() {
        return missing(&what);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = LoopFs::new(dir.path(), "src", "ext4", 1 << 30).expect("source fs");
    let made = generate(&src.mnt, 2000, 5).expect("generate");
    assert_eq!(made.hardlinked_names, 10_000);
    let lib = library(dir.path());
    let m = capture_one(&lib, "fidelity", &src.mnt);
    assert_eq!(m.filesystems.len(), 1);
    let source_views = tool_views(&src.mnt).expect("tool views of the source");
    for fstype in ["ext4", "xfs"] {
        let dst =
            LoopFs::new(dir.path(), &format!("dst-{fstype}"), fstype, 1 << 30).expect("target fs");
        let report = ferry_image::restore(
            &lib,
            &RestoreRequest {
                image: "fidelity".into(),
                at: None,
                fs: "/".into(),
                target: dst.mnt.clone(),
                overwrite: false,
                follow: None,
            },
            &Meter::silent(),
        )
        .expect("restore");
        assert_eq!(report.error_count, 0, "{fstype}: {:?}", report.errors);
        assert_eq!(report.hardlinks, 8000, "{fstype}");
        let diffs = compare(&src.mnt, &dst.mnt).expect("compare");
        assert!(
            diffs.is_empty(),
            "{fstype}: {} differences, first: {:#?}",
            diffs.len(),
            &diffs[..diffs.len().min(30)]
        );
        let views = tool_views(&dst.mnt).expect("tool views of the restore");
        for ((tool, want), (_, got)) in source_views.iter().zip(&views) {
            assert!(
                want == got,
                "{fstype}: {tool} differs:\n--- source\n{want}\n--- restored\n{got}"
            );
        }
        // The sparse file stayed sparse.
        let blocks = std::os::unix::fs::MetadataExt::blocks(
            &std::fs::metadata(dst.mnt.join(&made.sparse)).expect("sparse"),
        );
        assert!(
            blocks * 512 <= 1 << 20,
            "{fstype}: sparse file takes {} bytes",
            blocks * 512
        );
    }
}

#[test]
fn stock_restic_lists_checks_and_restores_from_the_library() {
    if let Some(what) = can_run() {
        return missing(&what);
    }
    if !Path::new("/usr/bin/restic").exists() {
        return missing("restic");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).expect("mkdir");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(tree.join("etc/payload.bin"), &payload).expect("write");
    std::fs::write(tree.join("etc/hostname"), b"fidelity\n").expect("write");
    let lib = library(dir.path());
    let m = capture_one(&lib, "web1", &tree);
    let repo = dir.path().join("library");
    let restic = |args: &[&str]| sh(ferry_tests::fidelity::restic(&repo, PASSWORD).args(args));
    let snaps: serde_json::Value = serde_json::from_str(
        &restic(&["snapshots", "--json", "--tag", "ferry-image=web1"]).expect("restic snapshots"),
    )
    .expect("snapshots JSON");
    let ids: Vec<&str> = snaps
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "one filesystem and the manifest: {snaps}");
    assert!(ids.contains(&m.filesystems[0].snapshot.as_str()));
    let check = restic(&["check", "--read-data"]).expect("restic check");
    assert!(check.contains("no errors were found"), "{check}");
    let out = dir.path().join("restic-out");
    restic(&[
        "restore",
        &m.filesystems[0].snapshot,
        "--target",
        out.to_str().expect("utf-8"),
        "--include",
        "/etc/payload.bin",
    ])
    .expect("restic restore");
    let got = std::fs::read(out.join("etc/payload.bin")).expect("restored by restic");
    assert!(got == payload, "restic restored a different file");
    assert!(
        !out.join("etc/hostname").exists(),
        "only the one file was asked for"
    );
    // The manifest is a file restic can print.
    let manifest = restic(&[
        "dump",
        "latest",
        "/.ferry/manifest.json",
        "--tag",
        "ferry-manifest",
    ])
    .expect("restic dump manifest");
    assert!(manifest.contains(&m.capture), "{manifest}");
}
