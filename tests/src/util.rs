//! Small helpers the suites share: ports, waiting, and the skip-or-fail rule.

use std::future::Future;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}

/// Whether `cargo xtask test` demanded every real server (then a missing one fails).
pub fn servers_required() -> bool {
    std::env::var_os("FERRY_REQUIRE_SERVERS").is_some()
}

/// Reports a missing prerequisite: a failure under `cargo xtask test`, a skip otherwise.
/// Returns normally only when skipping is allowed.
pub fn missing(what: &str) {
    if servers_required() {
        panic!("{what} is missing; `cargo xtask deps` installs it");
    }
    eprintln!("SKIPPED: {what} is missing (run `cargo xtask test` to install and require it)");
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out after {:.0} s waiting for {what}{}",
                timeout.as_secs_f64(),
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_port(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    wait_until(&format!("a listener on {addr}"), timeout, || async {
        Ok(tokio::net::TcpStream::connect(addr).await.is_ok())
    })
    .await
}
