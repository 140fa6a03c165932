//! Capture a small tree into a folder library and restore it.

use std::os::unix::fs::MetadataExt;

use ferry_image::{CaptureRequest, FsSource, Library, Location, Meter, RestoreRequest};
use ferry_model::image::Consistency;

#[test]
fn small_tree_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("etc/sub")).unwrap();
    std::fs::write(src.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    std::fs::hard_link(src.join("etc/hosts"), src.join("etc/sub/hosts2")).unwrap();
    std::os::unix::fs::symlink("../hosts", src.join("etc/sub/link")).unwrap();
    let lib_dir = dir.path().join("lib");
    let loc = Location::parse_url(lib_dir.to_str().unwrap()).unwrap();
    let lib = Library::connect(&loc, "secret").unwrap();
    lib.init().unwrap();
    let req = CaptureRequest {
        image: "smoke".into(),
        filesystems: vec![FsSource {
            path: "/".into(),
            read_from: src.clone(),
            consistency: Consistency::Live,
            fstype: None,
            ..Default::default()
        }],
        hostname: "h".into(),
        ..Default::default()
    };
    let m = ferry_image::capture(&lib, &req, &Meter::silent()).unwrap();
    eprintln!("{m:#?}");
    let to = dir.path().join("to");
    std::fs::create_dir(&to).unwrap();
    let r = ferry_image::restore(
        &lib,
        &RestoreRequest {
            image: "smoke".into(),
            at: None,
            fs: "/".into(),
            target: to.clone(),
            overwrite: false,
            follow: None,
        },
        &Meter::silent(),
    )
    .unwrap();
    eprintln!("{r:#?}");
    assert_eq!(r.error_count, 0);
    assert_eq!(
        std::fs::read(to.join("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    let a = std::fs::metadata(to.join("etc/hosts")).unwrap();
    let b = std::fs::metadata(to.join("etc/sub/hosts2")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        std::fs::read_link(to.join("etc/sub/link"))
            .unwrap()
            .to_str(),
        Some("../hosts")
    );
    let images = lib.images().unwrap();
    assert_eq!(images.len(), 1);
    let full = lib.manifest("smoke", None).unwrap();
    assert_eq!(full.capture, m.capture);
}
