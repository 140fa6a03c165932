//! Jobs in the store, carried on by manager replicas that hold nothing themselves: two
//! `ferry serve` replicas on one store, one killed while the agent captures; the other
//! finishes the job, and the agent ran the capture once. A failed job is retried under
//! a new command id; a migration waiting for its target is cancelled and sends nothing
//! more. A direct migration captures into its own temporary repository in the
//! library's folder, not into the library, and cancelling it deletes that repository.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::procs::{Proc, bin, command_runs, start_agent};
use ferry_tests::servers::Embedded;
use serde_json::Value;

/// Objects and bytes under `prefix` of `store`, all levels.
async fn tree_size(store: &dyn ferry_mailbox::store::Store, prefix: &str) -> (u64, u64) {
    let (mut objects, mut bytes) = (0, 0);
    let mut folders = vec![prefix.to_string()];
    while let Some(folder) = folders.pop() {
        let listing = store.list(&folder).await.expect("list");
        folders.extend(listing.folders.iter().map(|f| format!("{folder}{f}/")));
        objects += listing.objects.len() as u64;
        bytes += listing.sizes.iter().sum::<u64>();
    }
    (objects, bytes)
}

/// A manager replica: `ferry serve` on the test's store, without a store of its own.
fn replica(embedded: &Embedded, dir: &Path, name: &str) -> Proc {
    let mut config = embedded.config.clone();
    config.embedded = None;
    config.scan_secs = 0.3;
    let path = dir.join(format!("{name}.yaml"));
    config.save(&path).expect("replica config");
    Proc::spawn(
        name,
        Command::new(bin("ferry"))
            .arg("--config")
            .arg(&path)
            .arg("serve"),
        &dir.join(format!("{name}.log")),
    )
    .expect("start replica")
}

fn ferry(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run ferry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ferry_ok(config: &Path, args: &[&str]) -> String {
    let (ok, out, err) = ferry(config, args);
    assert!(ok, "ferry {} failed: {err}", args.join(" "));
    out
}

/// Runs a `ferry … --detach` that makes a job; the job's id.
fn detach(config: &Path, args: &[&str]) -> String {
    let mut args = args.to_vec();
    args.push("--detach");
    ferry_ok(config, &args).trim().to_string()
}

fn job(config: &Path, id: &str) -> Value {
    let out = ferry_ok(config, &["job", "show", id, "--json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("job show --json: {e}: {out}"))
}

/// Waits until `job show` satisfies `done`, failing with the job and `logs` after
/// `limit`.
fn wait_job(
    config: &Path,
    id: &str,
    limit: Duration,
    logs: &[&Proc],
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let j = job(config, id);
        if done(&j) {
            return j;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = logs
                .iter()
                .map(|p| format!("--- {}:\n{}", p.name(), p.log()))
                .collect();
            panic!("job {id} did not get there: {j:#}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(j: &Value) -> &str {
    j["status"].as_str().unwrap_or("?")
}

fn step<'j>(j: &'j Value, name: &str) -> &'j Value {
    j["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {j:#}"))
}

/// Commands of this job the agent ran (its log names each command it runs).
fn runs(agent: &Proc, command_id: &str) -> usize {
    command_runs(&agent.log(), command_id)
}

/// 256 MiB of random data, so that a capture lasts a few seconds.
fn source_tree(root: &Path) {
    use std::io::Read;
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/config"), b"listen 80;\n").expect("write");
    let mut random = std::fs::File::open("/dev/urandom").expect("urandom");
    for i in 0..4 {
        let mut f = std::fs::File::create(root.join(format!("data-{i}.bin"))).expect("create");
        std::io::copy(&mut (&mut random).take(64 << 20), &mut f).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_its_manager_and_no_command_runs_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let embedded = Embedded::start(&d.join("m")).await.expect("store");
    let cfg = embedded.config_path.clone();
    let agent = start_agent(&embedded.config, d);
    let tree = d.join("tree");
    source_tree(&tree);
    let tree_s = tree.to_string_lossy().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let out = ferry_ok(&cfg, &["agents", "--json"]);
        let v: Value = serde_json::from_str(&out).expect("agents json");
        if let Some(id) = v[0]["id"].as_str()
            && v[0]["status"].is_object()
        {
            break id.to_string();
        }
        assert!(Instant::now() < deadline, "no agent: {}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut first = replica(&embedded, d, "replica-1");
    let second = replica(&embedded, d, "replica-2");
    let job_id = detach(
        &cfg,
        &["capture", &id[..12], "--image", "web", "--path", &tree_s],
    );
    let logs = [&agent, &second];

    // Replica 1 dies while the agent captures; replica 2 carries the job on.
    wait_job(&cfg, &job_id, Duration::from_secs(60), &logs, |j| {
        step(j, "capture")["status"]["state"] == "running"
    });
    first.kill_hard();
    let killed_ms = ferry_mailbox::time::now_ms();
    let j = wait_job(&cfg, &job_id, Duration::from_secs(180), &logs, |j| {
        status(j) != "running"
    });
    assert_eq!(status(&j), "succeeded", "{j:#}");
    assert!(
        step(&j, "capture")["ended_ms"].as_u64() > Some(killed_ms),
        "the capture must end after replica 1 was killed: {j:#}"
    );
    assert!(second.log().contains("job event"), "{}", second.log());
    let captured = &step(&j, "capture")["status"]["outcome"];
    assert_eq!(captured["result"], "captured", "{j:#}");
    assert!(
        captured["filesystems"][0]["bytes"].as_u64() >= Some(256 << 20),
        "{j:#}"
    );
    let command_id = format!("{job_id}-capture-1");
    assert_eq!(runs(&agent, &command_id), 1, "{}", agent.log());
    let sends: Vec<&Value> = j["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "sent")
        .collect();
    assert!(
        !sends.is_empty() && sends.iter().all(|e| e["command_id"] == command_id.as_str()),
        "every send of the step is one command: {sends:#?}"
    );
    // The library holds the capture the job names.
    let images: Value =
        serde_json::from_str(&ferry_ok(&cfg, &["images", "--json"])).expect("images json");
    assert_eq!(images[0]["name"], "web", "{images}");
    let shown = ferry_ok(&cfg, &["job", "show", &job_id[..13]]);
    assert!(
        shown.contains("succeeded") && shown.contains(&tree_s),
        "{shown}"
    );
    let listed = ferry_ok(&cfg, &["jobs"]);
    assert!(
        listed.contains(&job_id[..13]) && listed.contains("capture✓"),
        "{listed}"
    );

    // A capture that fails fails its job with the agent's words; a retry is a new
    // command, run once more.
    let failing = detach(
        &cfg,
        &["capture", &id[..12], "--image", "web", "--path", "/proc"],
    );
    let j = wait_job(&cfg, &failing, Duration::from_secs(60), &logs, |j| {
        status(j) != "running"
    });
    assert_eq!(status(&j), "failed", "{j:#}");
    let error = step(&j, "capture")["status"]["error"]
        .as_str()
        .unwrap_or("");
    assert!(error.contains("never captured"), "{j:#}");
    let (ok, _, err) = ferry(&cfg, &["job", "retry", &failing, "--timeout", "60"]);
    assert!(
        !ok && err.contains("never captured") && err.contains("retry"),
        "{err}"
    );
    let j = job(&cfg, &failing);
    assert_eq!(step(&j, "capture")["attempt"], 2, "{j:#}");
    assert_eq!(runs(&agent, &format!("{failing}-capture-1")), 1);
    assert_eq!(runs(&agent, &format!("{failing}-capture-2")), 1);
    let (ok, _, err) = ferry(&cfg, &["job", "cancel", &failing]);
    assert!(!ok && err.contains("already failed"), "{err}");

    // A migration whose target never boots waits for it; cancelled, it sends nothing
    // more, and the replica leaves it.
    let waiting = detach(
        &cfg,
        &[
            "migrate",
            &id[..12],
            "--to",
            "mac=52:54:00:00:00:99",
            "--image",
            "web",
            "--path",
            &tree_s,
        ],
    );
    let j = wait_job(&cfg, &waiting, Duration::from_secs(120), &logs, |j| {
        step(j, "capture")["status"]["state"] == "done"
    });
    assert_eq!(step(&j, "target")["status"]["state"], "pending", "{j:#}");
    let out = ferry_ok(&cfg, &["job", "cancel", &waiting]);
    assert!(out.contains("cancelled"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    let j = job(&cfg, &waiting);
    assert_eq!(status(&j), "cancelled", "{j:#}");
    assert_eq!(step(&j, "deploy")["status"]["state"], "pending", "{j:#}");
    let (ok, _, err) = ferry(&cfg, &["job", "watch", &waiting]);
    assert!(!ok && err.contains("cancelled"), "{err}");

    // A direct migration captures into a temporary repository of its own, which is no
    // image of the library; cancelled, the repository is gone.
    let direct = detach(
        &cfg,
        &[
            "migrate",
            &id[..12],
            "--direct",
            "--to",
            "mac=52:54:00:00:00:98",
            "--image",
            "direct-web",
            "--path",
            &tree_s,
        ],
    );
    let j = wait_job(&cfg, &direct, Duration::from_secs(120), &logs, |j| {
        step(j, "capture")["status"]["state"] == "done"
    });
    assert_eq!(j["spec"]["direct"], true, "{j:#}");
    assert_eq!(step(&j, "discard")["status"]["state"], "pending", "{j:#}");
    let images: Value =
        serde_json::from_str(&ferry_ok(&cfg, &["images", "--json"])).expect("images json");
    assert!(
        images
            .as_array()
            .is_some_and(|a| a.iter().all(|i| i["name"] != "direct-web")),
        "a direct capture is no image of the library: {images}"
    );
    let store = ferry_mailbox::store::open(&embedded.manager_store()).expect("store");
    let repo = format!("library/direct/{direct}/");
    let (objects, bytes) = tree_size(store.as_ref(), &repo).await;
    assert!(
        objects > 3 && bytes >= 256 << 20,
        "the capture is in {repo}: {objects} objects, {bytes} bytes"
    );
    let shown = ferry_ok(&cfg, &["job", "show", &direct]);
    assert!(shown.contains("temporary repository"), "{shown}");
    // The library around it is whole.
    ferry_ok(&cfg, &["image", "check", "web"]);
    let out = ferry_ok(&cfg, &["job", "cancel", &direct]);
    assert!(
        out.contains("cancelled") && out.contains("temporary repository is deleted"),
        "{out}"
    );
    assert_eq!(tree_size(store.as_ref(), &repo).await, (0, 0), "{repo}");

    // Cancelled while its agent captures, the repository is kept until the capture
    // has ended; cancelling again then deletes everything it wrote.
    let busy = detach(
        &cfg,
        &[
            "migrate",
            &id[..12],
            "--direct",
            "--to",
            "mac=52:54:00:00:00:97",
            "--image",
            "direct-web",
            "--path",
            &tree_s,
        ],
    );
    wait_job(&cfg, &busy, Duration::from_secs(60), &logs, |j| {
        step(j, "capture")["status"]["state"] == "running"
    });
    let repo = format!("library/direct/{busy}/");
    let mut out = ferry_ok(&cfg, &["job", "cancel", &busy]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.contains("temporary repository is deleted") {
        assert!(
            out.contains("is kept while its agent still runs capture"),
            "{out}"
        );
        assert!(Instant::now() < deadline, "{out}\n{}", agent.log());
        std::thread::sleep(Duration::from_secs(1));
        out = ferry_ok(&cfg, &["job", "cancel", &busy]);
    }
    // A capture still running when the cancel came was asked to stop, and answered.
    if out.contains("asked agent") {
        assert!(
            out.contains("the capture step stopped") || out.contains("had ended before"),
            "{out}"
        );
    }
    assert_eq!(runs(&agent, &format!("{busy}-capture-1")), 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tree_size(store.as_ref(), &repo).await, (0, 0), "{repo}");

    // Bad input is named.
    let (ok, _, err) = ferry(&cfg, &["job", "show", "nosuch"]);
    assert!(!ok && err.contains("no such job"), "{err}");
    let (ok, _, err) = ferry(
        &cfg,
        &["migrate", &id[..12], "--to", "mac=52:54", "--detach"],
    );
    assert!(!ok && err.contains("six pairs"), "{err}");
}
