//! The agent as the ramdisk's init (PID 1).
//!
//! PID 1 only mounts the pseudo filesystems, then supervises: it starts the agent
//! proper as a child (`ferry-agent ramdisk-agent`), reaps every orphan, restarts the
//! child if it dies, and powers off or reboots when the child says a command asked
//! for it. Everything that can fail runs in the child, so nothing can make init exit
//! (which would panic the kernel). With `ferry.debug` a busybox shell runs on the
//! console as well.

pub mod coldplug;
pub mod dhcp;
pub mod hostnet;
pub mod net;
pub mod sys;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

/// Exit code of the child asking init to power the machine off.
pub const EXIT_POWEROFF: i32 = 10;
/// Exit code of the child asking init to reboot.
pub const EXIT_REBOOT: i32 = 11;
/// Exit code of the child when its config is unusable (init waits longer to retry).
pub const EXIT_CONFIG: i32 = 12;

/// Written by the agent once it has reached the store; what `ferry.fallback` waits for.
pub const REACHED_PATH: &str = "/run/ferry-reached";
/// How the server's installed agent put it into this ramdisk
/// ([`ferry_model::protocol::Entered`]), when it did.
pub const ENTERED_PATH: &str = "/etc/ferry/entered.json";

/// The kernel's command line followed by the parameters the ramdisk carries.
pub fn cmdline() -> String {
    let mut line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Ok(extra) = std::fs::read_to_string(ferry_boot::cmdline::EXTRA_PATH) {
        line.push(' ');
        line.push_str(extra.trim());
    }
    line
}

/// Notes that the agent reached the store (once is enough).
pub fn mark_reached() {
    if !std::path::Path::new(REACHED_PATH).exists() {
        let _ = std::fs::write(REACHED_PATH, b"");
    }
}

/// With `ferry.fallback=SECS`: reboots the machine when the agent has not reached the
/// store by then. A server's own ramdisk then comes back to the server's system: its
/// boot entry was for one boot only, or the init it replaced was put back.
fn fallback_watch(secs: u32) {
    std::thread::spawn(move || {
        let deadline = Duration::from_secs(u64::from(secs));
        let waited = Duration::from_millis(uptime_ms());
        std::thread::sleep(deadline.saturating_sub(waited));
        if std::path::Path::new(REACHED_PATH).exists() {
            return;
        }
        say(&format!(
            "the agent has not reached the store {secs} s after boot (ferry.fallback); rebooting"
        ));
        let e = sys::power(true);
        say(&format!("reboot failed: {e}"));
    });
}

/// Prints a line on the console, prefixed so it stands out among kernel messages.
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "ferry: {line}");
}

fn spawn(args: &[&str]) -> Option<i32> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(args)
        .env("PATH", "/usr/bin")
        .env("HOME", "/root")
        .env("TERM", "vt100");
    match cmd.spawn() {
        Ok(child) => Some(child.id() as i32),
        Err(e) => {
            say(&format!("cannot start {args:?}: {e}"));
            None
        }
    }
}

fn spawn_shell() -> Option<i32> {
    let _ = Command::new("/usr/bin/busybox")
        .args(["--install", "-s", "/usr/lib/busybox"])
        .status();
    let _ = std::fs::create_dir_all("/usr/lib/busybox");
    say("debug shell on the console (ferry.debug); the agent keeps running");
    match Command::new("/usr/bin/busybox")
        .args(["sh", "-l"])
        .env("PATH", "/usr/bin:/usr/lib/busybox")
        .env("PS1", "ferry# ")
        .spawn()
    {
        Ok(c) => Some(c.id() as i32),
        Err(e) => {
            say(&format!(
                "cannot start the debug shell /usr/bin/busybox: {e}"
            ));
            None
        }
    }
}

/// PID 1. Never returns.
pub fn init() -> ! {
    for (kind, target, opts) in [
        ("proc", "/proc", None),
        ("sysfs", "/sys", None),
        ("devtmpfs", "/dev", Some("mode=0755")),
        ("tmpfs", "/run", Some("mode=0755")),
    ] {
        if let Err(e) = sys::mount_fs(kind, target, opts) {
            say(&e.to_string());
        }
    }
    let (args, _) = ferry_boot::cmdline::parse(&cmdline());
    if let Some(secs) = args.fallback_secs {
        fallback_watch(secs);
    }
    let mut shell = if args.debug { spawn_shell() } else { None };
    let mut agent = spawn(&["ramdisk-agent"]);
    let mut started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some((pid, code)) = sys::reap() else {
            // No children at all: start the agent again after a pause.
            std::thread::sleep(backoff);
            agent = spawn(&["ramdisk-agent"]);
            started = Instant::now();
            continue;
        };
        if Some(pid) == shell {
            shell = spawn_shell();
            continue;
        }
        if Some(pid) != agent {
            continue; // an orphan, now reaped
        }
        match code {
            Some(EXIT_POWEROFF) => {
                say("powering off");
                let e = sys::power(false);
                say(&format!("power off failed: {e}"));
            }
            Some(EXIT_REBOOT) => {
                say("rebooting");
                let e = sys::power(true);
                say(&format!("reboot failed: {e}"));
            }
            Some(EXIT_CONFIG) => backoff = Duration::from_secs(60),
            other => {
                if started.elapsed() > Duration::from_secs(120) {
                    backoff = Duration::from_secs(1);
                }
                say(&format!(
                    "the agent ended ({}); starting it again in {} s",
                    other.map_or("killed by a signal".to_string(), |c| format!(
                        "exit code {c}"
                    )),
                    backoff.as_secs()
                ));
            }
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(60));
        agent = spawn(&["ramdisk-agent"]);
        started = Instant::now();
    }
}

/// Reads an `http://` URL with a bare HTTP/1.0 GET (the boot server speaks plain HTTP,
/// and the ramdisk has no other client before the agent starts).
pub fn http_get(url: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs or file paths are supported"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let mut conn = std::net::TcpStream::connect(&addr).map_err(|e| format!("{url}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ferry-ramdisk\r\n\r\n"
    )
    .map_err(|e| format!("{url}: {e}"))?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .map_err(|e| format!("{url}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{url}: the answer is not HTTP"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("{url}: the server answered {status:?}"));
    }
    Ok(raw[split + 4..].to_vec())
}

/// Milliseconds since the kernel started.
pub fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

fn load_config(
    args: &ferry_boot::cmdline::FerryArgs,
) -> Result<crate::config::AgentConfig, String> {
    use crate::config::AgentConfig;
    let source = args
        .config
        .clone()
        .unwrap_or_else(|| ferry_initramfs::info::CONFIG_PATH.to_string());
    let text = if source.starts_with("http://") {
        let bytes = http_get(&source)?;
        String::from_utf8(bytes).map_err(|_| format!("agent config {source} is not UTF-8 text"))?
    } else {
        std::fs::read_to_string(&source).map_err(|e| {
            format!(
                "agent config {source}: {e}; bake one in with `cargo xtask ramdisk --config FILE` or pass ferry.config=PATH|http://URL"
            )
        })?
    };
    AgentConfig::parse(&text).map_err(|e| {
        format!("agent config {source} does not parse: {e:#}; fix it (`ferry agent-config` writes a valid one)")
    })
}

/// The agent proper in the ramdisk: drivers, network, config, then the agent loop.
/// Returns the exit code init acts on.
pub fn agent_main() -> i32 {
    sys::warm_entropy();
    let (args, arg_errors) = ferry_boot::cmdline::parse(&cmdline());
    let warnings: Vec<String> = arg_errors.iter().map(|e| e.to_string()).collect();
    for w in &warnings {
        say(w);
    }
    let info: ferry_initramfs::info::RamdiskInfo = std::fs::read(ferry_initramfs::info::INFO_PATH)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let dir = coldplug::module_dir(&release);
    let started = Instant::now();
    let idx = match coldplug::index(&dir) {
        Ok(idx) => std::sync::Arc::new(idx),
        Err(e) => {
            say(&format!(
                "no modules for kernel {release} in this ramdisk ({e}); it was built for {:?}",
                info.kernel_release
            ));
            std::sync::Arc::new(Default::default())
        }
    };
    // Coldplug runs beside networking: DHCP starts as soon as a NIC shows up, while
    // slower devices (disk controllers, CD drives) are still being probed.
    let plug = {
        let (idx, dir, watch) = (idx.clone(), dir.clone(), info.watch.clone());
        std::thread::spawn(move || coldplug::coldplug(&idx, &dir, &watch, 10))
    };
    let network = loop {
        match net::bring_up(&args) {
            Ok(c) => {
                say(&format!(
                    "network: {c} (uptime {:.1} s)",
                    uptime_ms() as f64 / 1000.0
                ));
                break c.to_string();
            }
            Err(e) => {
                say(&format!("network: {e}; trying again in 15 s"));
                std::thread::sleep(Duration::from_secs(15));
            }
        }
    };
    let mut config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            say(&e);
            return EXIT_CONFIG;
        }
    };
    config.kind = Some(ferry_model::protocol::AgentKind::Ramdisk);
    let entered = std::fs::read(ENTERED_PATH)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let report = ferry_model::protocol::BootReport {
        network,
        warnings,
        uptime_ms: uptime_ms(),
        entered,
        ..Default::default()
    };
    // The agent starts now. Coldplug finishes (disk controllers are slow to probe) and
    // the filesystem, RAID and LVM modules load beside it; the status is updated with
    // each step, so the first heartbeat waits for none of them.
    let (updates, reports) = std::sync::mpsc::channel();
    {
        let (idx, dir, names) = (idx.clone(), dir.clone(), info.preload.clone());
        let mut report = report.clone();
        std::thread::spawn(move || {
            let outcome = plug.join().unwrap_or_else(|_| {
                say("coldplug failed; continuing without its report");
                coldplug::Outcome::default()
            });
            say(&format!(
                "coldplug loaded {} modules in {} ms",
                outcome.loaded.len(),
                started.elapsed().as_millis()
            ));
            for m in &outcome.missing {
                say(&format!(
                    "MISSING DRIVER: device {} ({}) needs {}, which this ramdisk left out; rebuild it with that module (cargo xtask ramdisk --drivers all)",
                    m.device,
                    m.modalias,
                    m.modules.join(" or ")
                ));
            }
            report.loaded = outcome.loaded;
            report.failed = outcome.failed;
            report.missing = outcome.missing;
            let _ = updates.send(report.clone());
            let p = coldplug::load_named(&idx, &dir, &names);
            say(&format!(
                "preloaded {} filesystem, RAID and LVM modules",
                p.loaded.len()
            ));
            if std::path::Path::new("/sys/firmware/efi").exists() {
                let _ = sys::mount_fs("efivarfs", "/sys/firmware/efi/efivars", None);
            }
            report.loaded.extend(p.loaded);
            report.failed.extend(p.failed);
            for f in &report.failed {
                say(&format!("module {} failed to load: {}", f.module, f.error));
            }
            let _ = updates.send(report);
        });
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("cannot start the async runtime: {e}"));
            return 1;
        }
    };
    let result = rt.block_on(async move {
        let mut agent = crate::runner::Agent::new(config)?;
        say(&format!(
            "agent {} starting (kind ramdisk, uptime {:.1} s)",
            agent.id(),
            uptime_ms() as f64 / 1000.0
        ));
        agent.set_boot_report(report);
        agent.set_boot_updates(reports);
        crate::runner::run_agent(agent, std::future::pending()).await
    });
    match result {
        Ok(crate::runner::Stop::Poweroff) => EXIT_POWEROFF,
        Ok(crate::runner::Stop::Reboot) => EXIT_REBOOT,
        Ok(crate::runner::Stop::BootRamdisk) => EXIT_REBOOT,
        Err(e) => {
            say(&format!("the agent failed: {e:#}"));
            1
        }
    }
}
