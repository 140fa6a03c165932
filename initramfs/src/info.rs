//! `/etc/ferry/ramdisk.json`: what the build put in the ramdisk, read by the agent at
//! boot (which modules to preload, where the modules are).

use serde::{Deserialize, Serialize};

/// Where the build writes [`RamdiskInfo`] inside the ramdisk.
pub const INFO_PATH: &str = "/etc/ferry/ramdisk.json";
/// Where the agent config is baked in.
pub const CONFIG_PATH: &str = "/etc/ferry/agent.yaml";

/// Facts about one ramdisk build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RamdiskInfo {
    /// The kernel release its modules are for (`uname -r`).
    pub kernel_release: String,
    /// The driver set it was built with (`all`, `virtio`, `pci:...`).
    pub drivers: String,
    /// Modules the agent loads at boot whatever the hardware, in load order.
    pub preload: Vec<String>,
    /// Every module in the ramdisk.
    pub modules: Vec<String>,
    /// Modules left out on purpose (`--exclude-module`).
    pub excluded: Vec<String>,
    /// Programs in /usr/bin.
    pub tools: Vec<String>,
    /// Firmware files included.
    pub firmware: Vec<String>,
    /// Every storage and network driver of the full kernel, included or not: a device
    /// that one of these would drive but the ramdisk lacks is reported missing.
    #[serde(default)]
    pub watch: Vec<String>,
}

/// Beside the base of a ramdisk (the ramdisk without kernel modules): what a server
/// needs to add its own kernel's drivers to it the way the build added the build
/// kernel's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// The module lists of the manifest the ramdisk was built from.
    pub modules: crate::drivers::Modules,
    /// Programs in /usr/bin.
    pub tools: Vec<String>,
}
