//! Child processes of the suites: Ferry's binaries and servers, logged to files and
//! always ended (by their PID) when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Path of a workspace binary (`ferry`, `ferry-agent`) next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    // target/<profile>/deps/<test> or target/<profile>/<bench> → target/<profile>/<name>
    let mut dir = exe.parent().expect("the executable is in a folder");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("deps is inside target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// A child process whose output goes to a log file; killed on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
    name: String,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the process: a crash, as far as it can tell.
    pub fn kill_hard(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to end.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        self.child.wait().expect("waiting for child")
    }

    /// Whether it has exited, with its status.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls `done` every 20 ms while the process runs; panics, with its log, when
    /// it exits first or `limit` passes.
    pub fn wait_until<T>(
        &mut self,
        what: &str,
        limit: std::time::Duration,
        mut done: impl FnMut(&mut Proc) -> Option<T>,
    ) -> T {
        let start = std::time::Instant::now();
        loop {
            if let Some(v) = done(self) {
                return v;
            }
            assert!(
                self.try_wait().is_none(),
                "{} ended before {what}: {}",
                self.name,
                self.log()
            );
            assert!(
                start.elapsed() < limit,
                "{}: no {what} in {limit:?}: {}",
                self.name,
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the process to exit; its status.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        self.wait_until("its exit", limit, Proc::try_wait)
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Proc {
    /// SIGTERM first, so servers such as Apache take their workers down with them;
    /// SIGKILL after three seconds.
    fn drop(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if self.try_wait().is_some() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill_hard();
    }
}

/// An installed agent of `manager` run as a process (state and log in `dir`), with a
/// 1 s heartbeat and a 0.2 s poll so that the suites run quickly.
pub fn start_agent(manager: &ferry_manager::config::ManagerConfig, dir: &Path) -> Proc {
    let mut config = manager
        .agent_config(dir.join("agent"))
        .expect("agent config");
    config.heartbeat_secs = 1.0;
    config.poll_secs = 0.2;
    let path = dir.join("agent.yaml");
    std::fs::write(&path, config.to_yaml().expect("yaml")).expect("write config");
    Proc::spawn(
        "ferry-agent",
        Command::new(bin("ferry-agent"))
            .arg("run")
            .arg("--config")
            .arg(&path),
        &dir.join("agent.log"),
    )
    .expect("start agent")
}

/// `ferry` run inside network namespace `netns`, if given.
pub fn ferry_command(netns: Option<&str>) -> Command {
    crate::netns::command(netns, bin("ferry"))
}

/// How many times `log` (an agent's log or a ramdisk's console) shows the agent
/// starting command `command_id`.
pub fn command_runs(log: &str, command_id: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("running command") && l.contains(command_id))
        .count()
}

/// `ferry init --data DATA ARGS…` (inside `netns` if given); the config file it wrote.
pub fn ferry_init(netns: Option<&str>, data: &Path, args: &[&str]) -> anyhow::Result<PathBuf> {
    let out = ferry_command(netns)
        .arg("init")
        .arg("--data")
        .arg(data)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "ferry init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(data.join("ferry.yaml"))
}

/// `ferry --config CONFIG serve` (inside `netns` if given), logged to `log`.
pub fn ferry_serve(netns: Option<&str>, config: &Path, log: &Path) -> anyhow::Result<Proc> {
    Proc::spawn(
        "ferry serve",
        ferry_command(netns)
            .arg("--config")
            .arg(config)
            .arg("serve"),
        log,
    )
}
