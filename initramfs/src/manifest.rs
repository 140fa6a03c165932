//! The declarative description of the ramdisk (`ramdisk.yaml`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

pub use crate::drivers::Modules;

/// The manifest shipped with Ferry.
pub const DEFAULT: &str = include_str!("../ramdisk.yaml");

/// What goes into the ramdisk besides the agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Kernel module selection.
    pub modules: Modules,
    /// Programs from the build host.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Host files copied when present.
    #[serde(default)]
    pub files: Vec<String>,
    /// Files written as given: path → content.
    #[serde(default)]
    pub write: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses manifest text.
    pub fn parse(text: &str) -> Result<Self> {
        serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Reads a manifest file, naming it in errors.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading ramdisk manifest {}", path.display()))?;
        Self::parse(&text)
            .with_context(|| format!("ramdisk manifest {} is not valid", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_manifest_parses() {
        let m = Manifest::parse(DEFAULT).unwrap();
        assert!(m.tools.iter().any(|t| t == "mdadm"));
        assert!(
            m.modules
                .preload
                .iter()
                .all(|p| m.modules.always.contains(p))
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = format!(
            "{:#}",
            Manifest::parse("modules: {}\ntoolz: []\n").unwrap_err()
        );
        assert!(err.contains("toolz"), "{err}");
    }
}
