//! The manager's boot server: plain HTTP for iPXE (which cannot be assumed to speak
//! TLS), serving the Ferry kernel, the ramdisk with this manager's agent config put in
//! front of it, and iPXE scripts — one generic script that chains to a per-machine one
//! named by the NIC's MAC address, which carries that machine's kernel command line.
//!
//! Per-machine settings live in the store (`boot/hosts/<mac>.json`), so every manager
//! replica serves the same scripts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry_mailbox::Store;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::ManagerConfig;

/// Settings of the boot server, part of the manager config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Where the HTTP boot server listens.
    pub listen: SocketAddr,
    /// The folder holding `vmlinuz` and `initrd.zst` (as `cargo xtask ramdisk` writes them).
    pub dir: PathBuf,
    /// The base URL machines fetch from, ending in `/`, e.g. `http://10.0.2.2:8081/boot/`.
    pub url: String,
    /// Kernel parameters for every machine.
    #[serde(default)]
    pub append: String,
}

/// One machine's boot settings, stored at `boot/hosts/<mac>.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostBoot {
    /// Extra kernel parameters, e.g. `ferry.ip=192.0.2.10/24,192.0.2.1`.
    #[serde(default)]
    pub append: String,
}

/// The store key of a machine's boot settings.
pub fn host_key(mac: &str) -> String {
    format!("boot/hosts/{}.json", mac.replace(':', "-"))
}

/// The ramdisk served to machines: this manager's agent config in front of the
/// configless ramdisk.
pub fn personalised_initrd(config: &ManagerConfig, initrd: &[u8]) -> Result<Vec<u8>> {
    let yaml = config.agent_config("/run/ferry-agent".into())?.to_yaml()?;
    let mut out = ferry_initramfs::cpio::config_overlay(&yaml);
    out.extend_from_slice(initrd);
    Ok(out)
}

struct State {
    config: ManagerConfig,
    boot: BootConfig,
    store: Arc<dyn Store>,
    prefix: String,
}

/// Binds the boot server's address.
pub async fn bind(boot: &BootConfig) -> Result<TcpListener> {
    TcpListener::bind(boot.listen).await.with_context(|| {
        format!(
            "cannot listen on {} for the boot server: is another `ferry serve` running?",
            boot.listen
        )
    })
}

/// Serves boot files on `listener` until `shutdown` resolves.
pub async fn serve(
    config: ManagerConfig,
    boot: BootConfig,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let prefix = url::Url::parse(&boot.url)
        .with_context(|| format!("boot url {:?} is not a URL", boot.url))?
        .path()
        .to_string();
    let state = Arc::new(State {
        config,
        boot,
        store,
        prefix,
    });
    info!(listen = %state.boot.listen, url = %state.boot.url, dir = %state.boot.dir.display(), "boot server serving");
    tokio::pin!(shutdown);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!("boot server accept: {e}"); continue; }
            },
            _ = &mut shutdown => break,
        };
        let state = state.clone();
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req, peer).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
    conns.shutdown().await;
    Ok(())
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(
    state: &State,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let Some(name) = path.strip_prefix(&state.prefix) else {
        return reply(StatusCode::NOT_FOUND, format!("nothing at {path}\n"));
    };
    let result = match name {
        "boot.ipxe" => Ok(ferry_boot::ipxe::chain_script(&state.boot.url).into_bytes()),
        "default.ipxe" => {
            Ok(ferry_boot::ipxe::boot_script(&state.boot.url, &state.boot.append).into_bytes())
        }
        "vmlinuz" => read(state, ferry_boot::KERNEL).await,
        "initrd.zst" => match read(state, ferry_boot::INITRD).await {
            Ok(base) => personalised_initrd(&state.config, &base),
            Err(e) => Err(e),
        },
        other => match other
            .strip_prefix("host/")
            .and_then(|f| f.strip_suffix(".ipxe"))
            .and_then(ferry_boot::cmdline::parse_mac)
        {
            Some(mac) => host_script(state, &mac).await,
            None => return reply(StatusCode::NOT_FOUND, format!("nothing at {path}\n")),
        },
    };
    match result {
        Ok(body) => {
            info!(%peer, file = name, bytes = body.len(), "boot file served");
            reply(StatusCode::OK, body)
        }
        Err(e) => {
            warn!(%peer, file = name, "boot file failed: {e:#}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n"))
        }
    }
}

async fn read(state: &State, name: &str) -> Result<Vec<u8>> {
    let path = state.boot.dir.join(name);
    tokio::fs::read(&path).await.with_context(|| {
        format!(
            "reading {} (build the ramdisk with `cargo xtask ramdisk --out {}`)",
            path.display(),
            state.boot.dir.display()
        )
    })
}

async fn host_script(state: &State, mac: &str) -> Result<Vec<u8>> {
    let host: HostBoot = match state.store.get(&host_key(mac)).await {
        Ok(Some(bytes)) => serde_json::from_slice(&bytes)
            .with_context(|| format!("boot settings {} are not valid", host_key(mac)))?,
        Ok(None) => HostBoot::default(),
        Err(e) => return Err(e.into()),
    };
    let append = format!("ferry.iface={mac} {} {}", state.boot.append, host.append);
    info!(mac, append = %append.trim(), "per-machine boot script");
    Ok(ferry_boot::ipxe::boot_script(&state.boot.url, &append).into_bytes())
}
