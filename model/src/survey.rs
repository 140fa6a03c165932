//! What an agent reports about the machine it runs on.

use serde::{Deserialize, Serialize};

/// A short inventory of the machine: enough to recognise it and to pick a target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Survey {
    /// The host name the kernel reports.
    pub hostname: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Number of logical CPUs.
    pub cpus: u32,
    /// Installed memory in bytes.
    pub memory_bytes: u64,
    /// Whole block devices (no partitions).
    pub disks: Vec<Disk>,
    /// Network interfaces with a hardware address.
    pub nics: Vec<Nic>,
}

/// A whole block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Model string, when the device reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number, when the device reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// A network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Kernel name, e.g. `eth0`.
    pub name: String,
    /// Hardware address, lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Kernel driver bound to the device, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Whether the link is up.
    pub up: bool,
}
