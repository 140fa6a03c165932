//! Corporate firewalls, for real: the store, the manager and the agent each live in a
//! network namespace; nftables in the agent's and the manager's namespaces drop every
//! inbound connection. The control plane still works, and a direct connection into the
//! agent's namespace fails (and succeeds once its firewall is lifted, proving the path).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_manager::config::ManagerConfig;
use ferry_tests::netns::{Net, OUTBOUND_ONLY, in_ns, tools_missing};
use ferry_tests::procs::{Proc, bin, ferry_init, ferry_serve};
use ferry_tests::util::missing;

const STORE_IP: &str = "10.231.7.1";
const MANAGER_IP: &str = "10.231.7.2";
const AGENT_IP: &str = "10.231.7.3";
/// Hosts of [`Net`]: the store's, the manager's, the agent's.
const STORE: usize = 0;
const MANAGER: usize = 1;
const AGENT: usize = 2;

fn ferry(ns: &str, config: &Path, args: &[&str]) -> String {
    let out = in_ns(ns, &bin("ferry"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("ferry");
    assert!(
        out.status.success(),
        "ferry {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn control_plane_works_through_outbound_only_firewalls() {
    if let Some(tool) = tools_missing() {
        return missing(tool);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Net::create("w", 7, &["st", "mg", "ag"]).expect("namespaces");
    net.firewall(AGENT, OUTBOUND_ONLY).expect("firewall");
    net.firewall(MANAGER, OUTBOUND_ONLY).expect("firewall");

    // The store's host runs `ferry serve` with the embedded store on the bridge.
    let data = dir.path().join("m");
    let host_path = ferry_init(
        Some(net.ns(STORE)),
        &data,
        &["--listen", &format!("{STORE_IP}:7443")],
    )
    .expect("init");
    let host = ManagerConfig::load(&host_path).expect("config");
    let _store = ferry_serve(
        Some(net.ns(STORE)),
        &host_path,
        &dir.path().join("store.log"),
    )
    .expect("serve store");

    // The manager runs in its own namespace against that store.
    let manager_path = data.join("manager.yaml");
    ManagerConfig {
        embedded: None,
        scan_secs: 0.5,
        ..host.clone()
    }
    .save(&manager_path)
    .expect("manager config");
    let _manager = ferry_serve(
        Some(net.ns(MANAGER)),
        &manager_path,
        &dir.path().join("manager.log"),
    )
    .expect("serve manager");

    let mut agent_config = host
        .agent_config(dir.path().join("agent"))
        .expect("agent config");
    agent_config.heartbeat_secs = 2.0;
    agent_config.poll_secs = 0.5;
    let agent_path = dir.path().join("agent.yaml");
    std::fs::write(&agent_path, agent_config.to_yaml().expect("yaml")).expect("write");
    let agent = Proc::spawn(
        "agent",
        in_ns(net.ns(AGENT), &bin("ferry-agent"))
            .arg("run")
            .arg("--config")
            .arg(&agent_path),
        &dir.path().join("agent.log"),
    )
    .expect("agent");

    // The manager finds the agent and sees it online.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let id = loop {
        let json = ferry(net.ns(MANAGER), &manager_path, &["agents", "--json"]);
        let views: Vec<serde_json::Value> = serde_json::from_str(&json).expect("json");
        if let Some(v) = views.iter().find(|v| v["health"] == "online") {
            break v["id"].as_str().expect("id").to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent never came online through the firewalls: {json}\nagent log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let ping = ferry(
        net.ns(MANAGER),
        &manager_path,
        &["ping", &id, "--count", "3"],
    );
    assert!(ping.contains("3 pings answered"), "{ping}");

    // The firewalls are real: nothing gets into the agent's or the manager's namespace...
    let listener = |ns: &str, addr: &str| {
        Proc::spawn(
            "listener",
            Command::new("ip").args([
                "netns",
                "exec",
                ns,
                "python3",
                "-m",
                "http.server",
                "--bind",
                addr,
                "8080",
            ]),
            &dir.path().join(format!("listener-{ns}.log")),
        )
        .expect("listener")
    };
    let _la = listener(net.ns(AGENT), AGENT_IP);
    let _lm = listener(net.ns(MANAGER), MANAGER_IP);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !net.connects(MANAGER, AGENT_IP, 8080),
        "manager reached into the agent's namespace"
    );
    assert!(
        !net.connects(AGENT, MANAGER_IP, 8080),
        "agent reached into the manager's namespace"
    );
    assert!(
        !net.connects(STORE, AGENT_IP, 8080),
        "the store host reached into the agent's namespace"
    );
    // ...while the same path works once the agent's firewall is lifted.
    net.firewall(AGENT, "").expect("firewall lifted");
    assert!(
        net.connects(MANAGER, AGENT_IP, 8080),
        "the path itself must work"
    );
}
