//! The agent's config file: where its store is, which manager it obeys, where it keeps state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_mailbox::StoreConfig;
use ferry_model::protocol::AgentKind;
use serde::{Deserialize, Serialize};

/// Everything an agent needs to run, as written by `ferry agent-config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The store holding this agent's mailbox.
    pub store: StoreConfig,
    /// Base64 Ed25519 public key of the manager whose commands this agent obeys.
    pub manager_key: String,
    /// Where the agent keeps its id, keys, state and message spool.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Seconds between heartbeats (jittered by ±10 %).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: f64,
    /// Seconds between looks into the commands folder.
    #[serde(default = "default_poll")]
    pub poll_secs: f64,
    /// Installed or ramdisk; installed unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AgentKind>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ferry-agent")
}

fn default_heartbeat() -> f64 {
    30.0
}

fn default_poll() -> f64 {
    5.0
}

impl AgentConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading agent config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("agent config {} is not valid", path.display()))
    }

    /// Parses and checks config text (YAML; JSON is YAML too).
    pub fn parse(text: &str) -> Result<Self> {
        let config: AgentConfig =
            serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        ferry_mailbox::seal::verifying_key(&self.manager_key)
            .context("manager_key must be the base64 Ed25519 key printed by `ferry init`")?;
        anyhow::ensure!(
            self.heartbeat_secs.is_finite() && self.heartbeat_secs >= 0.05,
            "heartbeat_secs must be at least 0.05"
        );
        anyhow::ensure!(
            self.poll_secs.is_finite() && self.poll_secs >= 0.01,
            "poll_secs must be at least 0.01"
        );
        Ok(())
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_secs)
    }

    /// The poll interval.
    pub fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_secs)
    }

    /// Serialises the config as YAML.
    pub fn to_yaml(&self) -> Result<String> {
        serde_saphyr::to_string(self).map_err(|e| anyhow::anyhow!("writing agent config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        ferry_mailbox::seal::KeyPair::generate().sign_public()
    }

    #[test]
    fn round_trips_through_yaml() {
        let c = AgentConfig {
            store: StoreConfig {
                url: "file:///tmp/s".into(),
                ..Default::default()
            },
            manager_key: key(),
            state_dir: "/tmp/a".into(),
            heartbeat_secs: 30.0,
            poll_secs: 2.0,
            kind: None,
        };
        let text = c.to_yaml().expect("yaml");
        assert_eq!(AgentConfig::parse(&text).expect("parses"), c);
    }

    #[test]
    fn errors_name_the_problem() {
        let err = AgentConfig::parse("store: {url: x}\nmanager_key: nope\n").unwrap_err();
        assert!(format!("{err:#}").contains("manager_key"), "{err:#}");
        let err = AgentConfig::parse("store: [").unwrap_err();
        assert!(!format!("{err:#}").is_empty());
        let text = format!("store: {{url: x}}\nmanager_key: {}\nbogus: 1\n", key());
        let err = AgentConfig::parse(&text).unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
    }
}
