//! Capture and restore through an agent's mailbox, driven by the `ferry` command line
//! against the embedded store: the library password and the library-scoped credential
//! travel sealed in the commands; `ferry images`, `ferry image show|check|rm` work on
//! the library; progress reaches the agent's status; failures come back in the
//! agent's own words.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_mailbox::store;
use ferry_manager::fleet::Fleet;
use ferry_tests::procs::{bin, start_agent};
use ferry_tests::servers::Embedded;
use serde_json::Value;

/// Runs `ferry --config CONFIG ARGS…` off the runtime; (success, stdout, stderr).
async fn ferry(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(bin("ferry"));
    cmd.arg("--config").arg(config).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run ferry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn ferry_ok(config: &Path, args: &[&str]) -> String {
    let (ok, out, err) = ferry(config, args).await;
    assert!(ok, "ferry {} failed: {err}", args.join(" "));
    out
}

async fn ferry_json(config: &Path, args: &[&str]) -> Value {
    let out = ferry_ok(config, args).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ferry {args:?}: {e}: {out}"))
}

/// A small tree with owners, modes, an xattr, a hardlink, a symlink, an empty
/// directory, and 288 MiB of random data so that the capture lasts a few seconds.
fn source_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/empty")).expect("mkdir");
    std::fs::write(root.join("etc/config"), b"listen 80;\n").expect("write");
    std::fs::hard_link(root.join("etc/config"), root.join("etc/config.link")).expect("link");
    std::os::unix::fs::symlink("config", root.join("etc/current")).expect("symlink");
    let suid = root.join("suid-tool");
    std::fs::write(&suid, b"#!/bin/sh\n").expect("write");
    std::os::unix::fs::chown(&suid, Some(1234), Some(5678)).expect("chown");
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).expect("chmod");
    xattr::set(root.join("etc/config"), "user.role", b"web").expect("xattr");
    let mut random = std::fs::File::open("/dev/urandom").expect("urandom");
    for i in 0..6 {
        let mut f = std::fs::File::create(root.join(format!("data-{i}.bin"))).expect("create");
        std::io::copy(&mut (&mut random).take(48 << 20), &mut f).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_and_restore_through_the_mailbox_with_sealed_library_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = Embedded::start(&dir.path().join("m")).await.expect("store");
    let cfg = embedded.config_path.clone();
    let lib = embedded
        .config
        .library
        .clone()
        .expect("init made a library");
    let mut agent = start_agent(&embedded.config, dir.path());
    let fleet = Fleet::new(
        store::open(&embedded.manager_store()).expect("open"),
        embedded.config.keys().expect("keys"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let id = loop {
        if let Ok(ids) = fleet.agent_ids().await
            && let [one] = ids.as_slice()
            && fleet.view(one).await.is_ok_and(|v| v.identity.is_some())
        {
            break one.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agent: {}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tree = dir.path().join("tree");
    source_tree(&tree);
    let tree_s = tree.to_string_lossy().to_string();

    // No library yet: an empty list, not an error.
    assert_eq!(
        ferry_json(&cfg, &["images", "--json"]).await,
        Value::Array(vec![])
    );

    let capture_args = [
        "capture",
        &id[..12],
        "--image",
        "web",
        "--path",
        &tree_s,
        "--json",
    ];
    // Capture, watching the agent's status meanwhile.
    let capture = {
        let cfg = cfg.clone();
        let args = capture_args.map(str::to_string);
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ferry(&cfg, &args).await
        })
    };
    let (mut phases, mut progress) = (Vec::new(), Vec::new());
    while !capture.is_finished() {
        if let Ok(v) = fleet.view(&id).await
            && let Some(s) = v.status
        {
            if phases.last() != Some(&s.phase) {
                phases.push(s.phase.clone());
            }
            progress.extend(s.progress);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out, err) = capture.await.expect("join");
    assert!(ok, "capture failed: {err}\nagent: {}", agent.log());
    let captured: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(captured["image"], "web");
    let fs = &captured["filesystems"][0];
    assert_eq!(fs["path"], tree_s.as_str());
    assert!(fs["bytes"].as_u64() >= Some(288 << 20), "{fs}");
    assert!(
        phases.iter().any(|p| p == "capturing"),
        "the status never said capturing: {phases:?}"
    );
    assert!(
        progress.iter().any(|p| p.done > 0 && p.files.is_some()),
        "no progress in the status: {progress:?}"
    );
    let first = captured["capture"]
        .as_str()
        .expect("capture id")
        .to_string();

    // Again, unchanged: nearly nothing new, a second recovery point.
    let again = ferry_json(&cfg, &capture_args).await;
    assert!(
        again["filesystems"][0]["added_bytes"].as_u64() < Some(1 << 20),
        "{again}"
    );
    let images = ferry_json(&cfg, &["images", "--json"]).await;
    assert_eq!(images[0]["name"], "web", "{images}");
    assert_eq!(images[0]["captures"].as_array().map(Vec::len), Some(2));
    let manifest = ferry_json(&cfg, &["image", "show", "web", "--json"]).await;
    assert_eq!(manifest["capture"], again["capture"]);
    assert!(
        manifest["survey"]["hostname"].is_string(),
        "the manifest carries the survey"
    );

    // Restore the first capture through the agent; the tree comes back whole.
    let to = dir.path().join("restored");
    std::fs::create_dir_all(&to).expect("mkdir");
    let to_s = to.to_string_lossy().to_string();
    let restored = ferry_json(
        &cfg,
        &[
            "restore",
            &id[..12],
            "--image",
            "web",
            "--capture",
            &first,
            "--fs",
            &tree_s,
            "--to",
            &to_s,
            "--json",
        ],
    )
    .await;
    assert_eq!(restored["capture"], first.as_str());
    assert_eq!(restored["report"]["error_count"], 0, "{restored}");
    // The capture itself read the source, which moved its access times (relatime);
    // everything else must match.
    let diffs: Vec<String> = ferry_tests::fidelity::compare(&tree, &to)
        .expect("compare")
        .into_iter()
        .filter(|d| !d.contains(": atime "))
        .collect();
    assert!(diffs.is_empty(), "{diffs:#?}");

    // Failures come back in the agent's words, and lose nothing.
    let (ok, _, err) = ferry(
        &cfg,
        &[
            "restore",
            &id[..12],
            "--image",
            "web",
            "--fs",
            &tree_s,
            "--to",
            &to_s,
        ],
    )
    .await;
    assert!(!ok && err.contains("not empty"), "{err}");
    let (ok, _, err) = ferry(
        &cfg,
        &["capture", &id[..12], "--image", "web", "--path", "/proc"],
    )
    .await;
    assert!(
        !ok && err.contains("never captured") && err.contains("capture-failed"),
        "{err}"
    );
    let (ok, _, err) = ferry(&cfg, &["image", "show", "nosuch"]).await;
    assert!(!ok && err.contains("nosuch"), "{err}");

    ferry_ok(&cfg, &["image", "check", "web"]).await;
    ferry_ok(&cfg, &["image", "rm", "web", "--capture", &first]).await;
    let images = ferry_json(&cfg, &["images", "--json"]).await;
    assert_eq!(
        images[0]["captures"].as_array().map(Vec::len),
        Some(1),
        "{images}"
    );
    ferry_ok(&cfg, &["image", "check", "web"]).await;

    // Each credential reaches only its part of the store.
    let library_store = ferry_mailbox::StoreConfig {
        access_key: lib.credential.as_ref().map(|c| c.access_key.clone()),
        secret_key: lib.credential.as_ref().map(|c| c.secret_key.clone()),
        ..embedded.manager_store()
    };
    let as_library = store::open(&library_store).expect("open");
    assert!(
        as_library
            .get("library/config")
            .await
            .expect("config")
            .is_some()
    );
    let status = ferry_mailbox::keys::status(&id);
    assert!(
        as_library.get(&status).await.is_err(),
        "library credential read a mailbox"
    );
    let as_agent = store::open(&embedded.agent_store()).expect("open");
    assert!(
        as_agent.get("library/config").await.is_err(),
        "agent credential read the library"
    );
    assert!(as_agent.get(&status).await.expect("own mailbox").is_some());
    agent.terminate();
}

/// Manager replicas that find no library at the same moment each create one; only one
/// may win, or a key that does not open the config is left behind (a capture then
/// fails on "cryptographic operations"). Eight creators race on the embedded store;
/// one reports creating it, the library has one key, and every creator and a fresh
/// connection open it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creators_make_one_library_that_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded = Embedded::start(&dir.path().join("data"))
        .await
        .expect("embedded");
    let config = embedded.config.clone();
    let created = tokio::task::spawn_blocking(move || {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (config, barrier) = (config.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let lib = ferry_manager::images::open(&config).expect("library");
                    barrier.wait();
                    let made = lib.ensure().expect("ensure");
                    lib.images().expect("the library opens for every creator");
                    made
                })
            })
            .collect();
        let made: Vec<bool> = racers
            .into_iter()
            .map(|r| r.join().expect("racer"))
            .collect();
        let lib = ferry_manager::images::open(&config).expect("library");
        assert!(lib.images().expect("opens").is_empty());
        assert!(!lib.ensure().expect("ensure again"), "a library was there");
        let e = lib.init().expect_err("init over a library").to_string();
        assert!(e.contains("one exists there already"), "{e}");
        made
    })
    .await
    .expect("join");
    assert_eq!(created.iter().filter(|m| **m).count(), 1, "{created:?}");
    let store = store::open(&embedded.manager_store()).expect("store");
    let keys = store.list("library/keys/").await.expect("list keys");
    assert_eq!(keys.objects.len(), 1, "one key: {:?}", keys.objects);
}
