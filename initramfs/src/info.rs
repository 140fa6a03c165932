//! `/etc/ferry/ramdisk.json`: what the build put in the ramdisk, read by the agent at
//! boot (which modules to preload, where the modules are).

use serde::{Deserialize, Serialize};

/// Where the build writes [`RamdiskInfo`] inside the ramdisk.
pub const INFO_PATH: &str = "/etc/ferry/ramdisk.json";
/// Where the agent config is baked in.
pub const CONFIG_PATH: &str = "/etc/ferry/agent.yaml";
/// The kernel's full alias table, kept so the agent can name drivers left out.
pub const ALL_ALIASES: &str = "modules.alias.all";

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
}
