//! Corporate firewalls, for real: the store, the manager and the agent each live in a
//! network namespace; nftables in the agent's and the manager's namespaces drop every
//! inbound connection. The control plane still works, and a direct connection into the
//! agent's namespace fails (and succeeds once its firewall is lifted, proving the path).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use ferry_manager::config::ManagerConfig;
use ferry_tests::procs::{Proc, bin};
use ferry_tests::util::missing;

const STORE_IP: &str = "10.231.7.1";
const MANAGER_IP: &str = "10.231.7.2";
const AGENT_IP: &str = "10.231.7.3";

/// Inbound connections dropped; outbound and their replies allowed.
const OUTBOUND_ONLY: &str = "table inet ferry_fw {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iifname \"lo\" accept
  }
}
";

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Three namespaces on one bridge; removed on drop.
struct Net {
    store: String,
    manager: String,
    agent: String,
}

impl Net {
    fn create() -> Net {
        let tag = std::process::id() % 100_000;
        let net = Net {
            store: format!("fst{tag}"),
            manager: format!("fmg{tag}"),
            agent: format!("fag{tag}"),
        };
        for ns in [&net.store, &net.manager, &net.agent] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &net.store, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &net.store,
            "addr",
            "add",
            &format!("{STORE_IP}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &net.store, "link", "set", "br0", "up"]);
        for (ns, addr, port) in [
            (&net.manager, MANAGER_IP, "pm"),
            (&net.agent, AGENT_IP, "pa"),
        ] {
            ip(&[
                "link", "add", port, "netns", &net.store, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
            ip(&["-n", &net.store, "link", "set", port, "master", "br0", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    fn firewall(&self, ns: &str, on: bool) {
        let script = if on { OUTBOUND_ONLY } else { "flush ruleset\n" };
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write rules");
        assert!(child.wait().expect("nft").success(), "nft rules in {ns}");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.agent, &self.manager, &self.store] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Can `from` open a TCP connection to `addr:port`? (bash's /dev/tcp, 3 s limit.)
fn connects(from: &str, addr: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", from, "timeout", "3", "bash", "-c"])
        .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

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
    for tool in ["/usr/sbin/ip", "/usr/sbin/nft"] {
        if !Path::new(tool).exists() {
            return missing(tool);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let net = Net::create();
    net.firewall(&net.agent, true);
    net.firewall(&net.manager, true);

    // The store's host runs `ferry serve` with the embedded store on the bridge.
    let data = dir.path().join("m");
    let init = in_ns(&net.store, &bin("ferry"))
        .args(["init", "--listen", &format!("{STORE_IP}:7443"), "--data"])
        .arg(&data)
        .output()
        .expect("init");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let host_path = data.join("ferry.yaml");
    let host = ManagerConfig::load(&host_path).expect("config");
    let _store = Proc::spawn(
        "store",
        in_ns(&net.store, &bin("ferry"))
            .arg("--config")
            .arg(&host_path)
            .arg("serve"),
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
    let _manager = Proc::spawn(
        "manager",
        in_ns(&net.manager, &bin("ferry"))
            .arg("--config")
            .arg(&manager_path)
            .arg("serve"),
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
        in_ns(&net.agent, &bin("ferry-agent"))
            .arg("run")
            .arg("--config")
            .arg(&agent_path),
        &dir.path().join("agent.log"),
    )
    .expect("agent");

    // The manager finds the agent and sees it online.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let id = loop {
        let json = ferry(&net.manager, &manager_path, &["agents", "--json"]);
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
    let ping = ferry(&net.manager, &manager_path, &["ping", &id, "--count", "3"]);
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
    let _la = listener(&net.agent, AGENT_IP);
    let _lm = listener(&net.manager, MANAGER_IP);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !connects(&net.manager, AGENT_IP, 8080),
        "manager reached into the agent's namespace"
    );
    assert!(
        !connects(&net.agent, MANAGER_IP, 8080),
        "agent reached into the manager's namespace"
    );
    assert!(
        !connects(&net.store, AGENT_IP, 8080),
        "the store host reached into the agent's namespace"
    );
    // ...while the same path works once the agent's firewall is lifted.
    net.firewall(&net.agent, false);
    assert!(
        connects(&net.manager, AGENT_IP, 8080),
        "the path itself must work"
    );
}
