//! `cargo xtask demo`: Ferry's main job on embedded defaults, in one command — a
//! migration of a Debian web server VM onto a new VM (the `demo-migrate` program of
//! the tests crate, after the prerequisites and the ramdisk).
//!
//! `cargo xtask demo fleet`: the control plane alone, in seconds. Starts an embedded
//! store and a manager, starts three local agents, waits until all are healthy, prints
//! the fleet, pings each through its mailbox, then stops everything it started.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::sh;

const AGENTS: usize = 3;

/// Children that are stopped (SIGTERM, then SIGKILL) however the demo ends.
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (name, c) in &mut self.0 {
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if c.try_wait().ok().flatten().is_none() {
                eprintln!("xtask: {name} did not stop on SIGTERM; killing it");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn spawn(children: &mut Children, name: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    let file = std::fs::File::create(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    children.0.push((name.to_string(), child));
    Ok(())
}

fn ferry(bin: &Path, config: &Path) -> Command {
    let mut c = Command::new(bin.join("ferry"));
    c.env("FERRY_CONFIG", config).env("RUST_LOG", "warn");
    c
}

/// Runs the migration demo: prerequisites (Debian packages, the ramdisk), then the
/// `demo-migrate` program.
pub fn migration() -> Result<()> {
    crate::bench::guest_prerequisites()?;
    crate::bench::tests_bin("demo-migrate")
}

/// Runs the fleet demo.
pub fn run() -> Result<()> {
    sh::run(Command::new("cargo").current_dir(sh::root()).args([
        "build",
        "--quiet",
        "--bins",
        "-p",
        "ferry-manager",
        "-p",
        "ferry-agent",
    ]))?;
    let bin = sh::root().join("target/debug");
    let work = tempfile_dir()?;
    let result = demo(&bin, &work);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!("xtask: logs kept in {}", work.display());
    }
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn demo(bin: &Path, work: &Path) -> Result<()> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let data = work.join("manager");
    let config = data.join("ferry.yaml");
    println!(
        "== ferry init: manager keys, TLS CA, credentials, embedded store on 127.0.0.1:{port}"
    );
    sh::run(
        ferry(bin, &config)
            .args(["init", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(&data),
    )?;
    let mut children = Children(Vec::new());
    println!("== ferry serve: embedded S3 store over TLS + manager daemon");
    spawn(
        &mut children,
        "ferry serve",
        ferry(bin, &config).arg("serve"),
        &work.join("serve.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the embedded store did not come up; see {}",
                work.join("serve.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("== starting {AGENTS} agents (outbound connections only; nothing listens on them)");
    for n in 1..=AGENTS {
        let agent_config = work.join(format!("agent-{n}.yaml"));
        sh::quiet(
            ferry(bin, &config)
                .args(["agent-config", "--heartbeat", "5", "--poll", "1", "--out"])
                .arg(&agent_config)
                .arg("--state-dir")
                .arg(work.join(format!("agent-{n}"))),
        )?;
        spawn(
            &mut children,
            &format!("agent {n}"),
            Command::new(bin.join("ferry-agent"))
                .env("RUST_LOG", "info")
                .args(["run", "--config"])
                .arg(&agent_config),
            &work.join(format!("agent-{n}.log")),
        )?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let json = sh::quiet(ferry(bin, &config).args(["agents", "--json"]))?;
        let views: Vec<serde_json::Value> = serde_json::from_str(&json)
            .with_context(|| format!("`ferry agents --json` printed something else:\n{json}"))?;
        let online: Vec<String> = views
            .iter()
            .filter(|v| v["health"] == "online")
            .filter_map(|v| v["id"].as_str().map(str::to_string))
            .collect();
        if online.len() == AGENTS {
            break online;
        }
        if Instant::now() > deadline {
            bail!("agents did not all come online within 30 s:\n{json}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("== ferry agents");
    print!("{}", sh::quiet(ferry(bin, &config).arg("agents"))?);
    for id in &ids {
        println!("== ferry ping {}", &id[..12]);
        print!(
            "{}",
            sh::quiet(ferry(bin, &config).args(["ping", id, "--count", "3"]))?
        );
    }
    println!("== stopping agents and manager");
    drop(children);
    println!("demo finished: {AGENTS} agents found, healthy and answering through their mailboxes");
    Ok(())
}
