//! The manager's config (`ferry.yaml` in its data folder) and `ferry init`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_agent::config::AgentConfig;
use ferry_mailbox::StoreConfig;
use ferry_mailbox::seal::KeyPair;
use ferry_mailbox::store::folder::write_atomic;
use serde::{Deserialize, Serialize};

use crate::embedded::{Credential, EmbeddedConfig};

/// Default address of the embedded store.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

/// The manager config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagerConfig {
    /// The store the manager reads and writes.
    pub store: StoreConfig,
    /// The manager's key file (signing commands); relative paths are from the config's folder.
    pub key_file: PathBuf,
    /// The embedded store `ferry serve` runs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedConfig>,
    /// Seconds between the daemon's scans of the fleet.
    #[serde(default = "default_scan")]
    pub scan_secs: f64,
    /// Heartbeat interval written into new agent configs.
    #[serde(default = "default_heartbeat")]
    pub agent_heartbeat_secs: f64,
    /// Poll interval written into new agent configs.
    #[serde(default = "default_poll")]
    pub agent_poll_secs: f64,
    /// The store URL as agents reach it, when it differs from the manager's (e.g.
    /// `s3+https://10.0.2.2:7443/ferry` for VMs on QEMU's user network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_store_url: Option<String>,
    /// The HTTP boot server `ferry serve` runs, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::bootserver::BootConfig>,
    /// The image library, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<LibraryConfig>,
    /// Whether `ferry serve` carries jobs on (off for a host that only serves the store).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub carry_jobs: bool,
    /// Providers that make target machines, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub providers: BTreeMap<String, crate::providers::ProviderConfig>,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// Where images are kept, and how the manager and agents open the library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryConfig {
    /// The library as the manager reaches it: a folder, `s3+https://HOST:PORT/BUCKET/FOLDER`
    /// or `dav+https://HOST:PORT/PATH`.
    pub url: String,
    /// The library as agents reach it, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_url: Option<String>,
    /// File holding the repository password; relative paths are from the config's folder.
    pub password_file: PathBuf,
    /// Store credential scoped to the library; the manager uses it, and seals it into
    /// capture and restore commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// CA certificate (PEM) of the library's store, when not publicly trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

fn default_scan() -> f64 {
    1.0
}
fn default_heartbeat() -> f64 {
    30.0
}
fn default_poll() -> f64 {
    5.0
}

/// The default data folder: `$FERRY_DATA`, else `~/.ferry`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERRY_DATA") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".ferry")
}

/// The config file in a data folder.
pub fn config_path(data: &Path) -> PathBuf {
    data.join("ferry.yaml")
}

impl ManagerConfig {
    /// Reads a config file; relative paths in it are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading manager config {}: run `ferry init` first, or pass --config",
                path.display()
            )
        })?;
        let mut config: ManagerConfig = serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("manager config {} is not valid: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.key_file = base.join(&config.key_file);
        if let Some(lib) = &mut config.library {
            lib.password_file = base.join(&lib.password_file);
        }
        for p in config.providers.values_mut() {
            p.resolve_paths(base);
        }
        Ok(config)
    }

    /// Writes the config file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text =
            serde_saphyr::to_string(self).map_err(|e| anyhow::anyhow!("encoding config: {e}"))?;
        write_atomic(path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The manager's keys.
    pub fn keys(&self) -> Result<KeyPair> {
        KeyPair::load(&self.key_file)
    }

    /// An agent config for this manager: the embedded store with the agent credential
    /// when there is one, else this manager's own store config.
    pub fn agent_config(&self, state_dir: PathBuf) -> Result<AgentConfig> {
        let mut store = match &self.embedded {
            Some(e) => StoreConfig {
                url: self.store.url.clone(),
                access_key: Some(e.agent.access_key.clone()),
                secret_key: Some(e.agent.secret_key.clone()),
                ca_pem: self.store.ca_pem.clone(),
                region: None,
            },
            None => self.store.clone(),
        };
        if let Some(url) = &self.agent_store_url {
            store.url = url.clone();
        }
        Ok(AgentConfig {
            store,
            manager_key: self.keys()?.sign_public(),
            state_dir,
            heartbeat_secs: self.agent_heartbeat_secs,
            poll_secs: self.agent_poll_secs,
            kind: None,
        })
    }
}

/// Options of `ferry init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The data folder.
    pub data: PathBuf,
    /// Where the embedded store listens.
    pub listen: SocketAddr,
    /// Extra names (DNS or IP) for the store's certificate.
    pub tls_names: Vec<String>,
    /// Use this store instead of an embedded one.
    pub store: Option<StoreConfig>,
    /// The store URL as agents reach it, if not the manager's.
    pub agent_store_url: Option<String>,
    /// The boot server, if wanted.
    pub boot: Option<crate::bootserver::BootConfig>,
    /// Heartbeat interval for agent configs (default 30 s).
    pub agent_heartbeat_secs: Option<f64>,
    /// Poll interval for agent configs (default 5 s).
    pub agent_poll_secs: Option<f64>,
}

/// Creates the data folder: manager keys, TLS material, credentials, config.
/// Refuses to overwrite an existing config (that would orphan every agent).
pub fn init(opts: &InitOptions) -> Result<PathBuf> {
    let data = &opts.data;
    let path = config_path(data);
    anyhow::ensure!(
        !path.exists(),
        "{} exists already: the manager key in it is pinned by agents; remove the folder yourself to start over",
        path.display()
    );
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let data = data
        .canonicalize()
        .with_context(|| format!("resolving {}", data.display()))?;
    KeyPair::generate().save(&data.join("manager.key"))?;
    let (store, embedded) = match &opts.store {
        Some(store) => (store.clone(), None),
        None => {
            let mut names = vec!["localhost".to_string(), opts.listen.ip().to_string()];
            names.extend(opts.tls_names.iter().cloned());
            names.dedup();
            let tls = crate::tls::generate(&names)?;
            let dir = data.join("tls");
            write_atomic(&dir.join("ca.pem"), tls.ca_pem.as_bytes(), 0o644)?;
            write_atomic(&dir.join("server.pem"), tls.cert_pem.as_bytes(), 0o644)?;
            write_atomic(&dir.join("server.key"), tls.key_pem.as_bytes(), 0o600)?;
            let embedded = EmbeddedConfig {
                listen: opts.listen,
                root: data.join("store"),
                bucket: "ferry".into(),
                tls_cert: dir.join("server.pem"),
                tls_key: dir.join("server.key"),
                tls_ca: dir.join("ca.pem"),
                manager: Credential::generate("FM"),
                agent: Credential::generate("FA"),
                library: Some(Credential::generate("FL")),
            };
            let store = StoreConfig {
                url: format!("s3+https://{}/ferry", opts.listen),
                access_key: Some(embedded.manager.access_key.clone()),
                secret_key: Some(embedded.manager.secret_key.clone()),
                ca_pem: Some(tls.ca_pem),
                region: None,
            };
            (store, Some(embedded))
        }
    };
    // With the embedded store, the library lives in its bucket under `library/`, opened
    // with the library-scoped credential; its password is made here.
    let library = match &embedded {
        Some(e) => {
            let password: [u8; 32] = ferry_mailbox::seal::random_bytes();
            write_atomic(
                &data.join("library.password"),
                ferry_mailbox::seal::b64(&password).as_bytes(),
                0o600,
            )?;
            let folder = crate::embedded::LIBRARY_PREFIX.trim_end_matches('/');
            Some(LibraryConfig {
                url: format!("{}/{folder}", store.url),
                agent_url: opts
                    .agent_store_url
                    .as_ref()
                    .map(|u| format!("{}/{folder}", u.trim_end_matches('/'))),
                password_file: PathBuf::from("library.password"),
                credential: e.library.clone(),
                ca_pem: store.ca_pem.clone(),
            })
        }
        None => None,
    };
    let config = ManagerConfig {
        store,
        key_file: PathBuf::from("manager.key"),
        embedded,
        scan_secs: default_scan(),
        agent_heartbeat_secs: opts.agent_heartbeat_secs.unwrap_or_else(default_heartbeat),
        agent_poll_secs: opts.agent_poll_secs.unwrap_or_else(default_poll),
        agent_store_url: opts.agent_store_url.clone(),
        boot: opts.boot.clone(),
        library,
        carry_jobs: true,
        providers: BTreeMap::new(),
    };
    config.save(&path)?;
    Ok(path)
}
