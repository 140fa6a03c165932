//! Providers make target machines for jobs: a machine with the CPUs, memory, disks,
//! NICs and firmware a [`MachineSpec`] asks for, booting Ferry's ramdisk from the
//! manager's boot server (or a CD), and switched on, off or reset on request. The job
//! engine then knows the machine's ramdisk agent by a NIC's MAC.
//!
//! A provider's `ensure` is idempotent by name: every manager replica may call it for
//! the same job, and the machine is made once — for the QEMU provider, by replicas
//! that share its host and folder (its lock and records are files there), which is
//! why a replica without a provider in its config leaves that provider's machines to
//! the others. QEMU is the first provider; libvirt and clouds implement the same trait.

pub mod qemu;

use std::path::Path;

use anyhow::{Result, bail};
use async_trait::async_trait;
use ferry_model::machine::{Machine, MachineSpec};
use serde::{Deserialize, Serialize};

use crate::config::ManagerConfig;

/// A provider's settings, under `providers: NAME:` in the manager config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum ProviderConfig {
    /// Local QEMU VMs.
    Qemu(qemu::QemuConfig),
}

impl ProviderConfig {
    /// Makes relative paths relative to the config file's folder `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        match self {
            ProviderConfig::Qemu(q) => q.dir = base.join(&q.dir),
        }
    }
}

/// What to do with a machine's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    /// Switch it on (from its disks; the ramdisk boot is for the first start only).
    On,
    /// Switch it off at once, like pulling the plug.
    Off,
    /// Reset it.
    Reset,
}

/// A machine a provider holds, and whether it runs.
#[derive(Debug, Clone, Serialize)]
pub struct MachineStatus {
    /// The machine (`created` false: listed, not made now).
    pub machine: Machine,
    /// What it was made to.
    pub spec: MachineSpec,
    /// Whether it is switched on.
    pub running: bool,
}

/// Makes and runs machines.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Makes machine `name` to `spec` and starts it booting Ferry's ramdisk, unless
    /// it was made already (then it is left as it is); the machine.
    async fn ensure(&self, name: &str, spec: &MachineSpec) -> Result<Machine>;
    /// The machines it holds.
    async fn list(&self) -> Result<Vec<MachineStatus>>;
    /// Switches machine `name` on or off, or resets it.
    async fn power(&self, name: &str, action: PowerAction) -> Result<()>;
    /// Switches machine `name` off and removes it with its disks.
    async fn delete(&self, name: &str) -> Result<()>;
}

/// Provider `name` of the manager config.
pub fn open(config: &ManagerConfig, name: &str) -> Result<Box<dyn Provider>> {
    let Some(p) = config.providers.get(name) else {
        let known: Vec<&str> = config.providers.keys().map(String::as_str).collect();
        bail!(
            "the manager config has no provider {name:?} ({}); add one under `providers:`, e.g. \
             `{name}: {{kind: qemu, dir: machines}}`",
            if known.is_empty() {
                "it has none".to_string()
            } else {
                format!("it has {}", known.join(", "))
            }
        );
    };
    Ok(match p {
        ProviderConfig::Qemu(q) => Box::new(qemu::Qemu::new(name, q.clone(), config.clone())),
    })
}

/// The provider holding machine `name`: the one given, or the only one that has it.
pub async fn holding(
    config: &ManagerConfig,
    name: &str,
    provider: Option<&str>,
) -> Result<Box<dyn Provider>> {
    if let Some(p) = provider {
        return open(config, p);
    }
    let mut found = Vec::new();
    for p in config.providers.keys() {
        let provider = open(config, p)?;
        if provider
            .list()
            .await?
            .iter()
            .any(|m| m.machine.name == name)
        {
            found.push((p.clone(), provider));
        }
    }
    match found.len() {
        1 => Ok(found.remove(0).1),
        0 => bail!("no provider holds a machine {name:?}; `ferry machines` lists them"),
        _ => bail!(
            "several providers hold a machine {name:?} ({}); name one with --provider",
            found
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `ferry machines`: every provider's machines.
pub async fn list(config: &ManagerConfig, json: bool) -> Result<()> {
    let mut all = Vec::new();
    for name in config.providers.keys() {
        all.extend(open(config, name)?.list().await?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no machines");
    }
    for m in all {
        let disks: Vec<String> = m
            .spec
            .disks
            .iter()
            .map(|d| format!("{}G", d.size_gib))
            .collect();
        println!(
            "{:<40} {:<8} {:<3} {} CPU {} MiB {:?} disks {} NIC {}",
            m.machine.name,
            m.machine.provider,
            if m.running { "on" } else { "off" },
            m.spec.cpus,
            m.spec.memory_mib,
            m.spec.firmware,
            disks.join("+"),
            m.machine.macs.join(",")
        );
    }
    Ok(())
}
