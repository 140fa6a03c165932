//! Judging an agent's health from its last heartbeat.

use ferry_model::protocol::Heartbeat;
use serde::Serialize;

/// How many intervals may pass before an agent is called offline (DESIGN: N = 2).
pub const OFFLINE_AFTER_INTERVALS: u64 = 2;

/// An agent's health as a manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The last heartbeat is within its interval (plus jitter slack).
    Online,
    /// A heartbeat is overdue, but fewer than N intervals have passed.
    Late,
    /// More than N intervals have passed, or no heartbeat was ever written.
    Offline,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Online => "online",
            Health::Late => "late",
            Health::Offline => "offline",
        })
    }
}

/// Judges health at `now_ms`. A quarter interval of slack covers jitter and store latency.
pub fn judge(heartbeat: Option<&Heartbeat>, now_ms: u64) -> Health {
    let Some(hb) = heartbeat else {
        return Health::Offline;
    };
    let interval = hb.interval_ms.max(1);
    if now_ms > hb.at_ms.saturating_add(OFFLINE_AFTER_INTERVALS * interval) {
        Health::Offline
    } else if now_ms > hb.at_ms.saturating_add(interval + interval / 4) {
        Health::Late
    } else {
        Health::Online
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(at_ms: u64) -> Heartbeat {
        Heartbeat {
            schema: 1,
            agent_id: String::new(),
            seq: 1,
            at_ms,
            interval_ms: 30_000,
        }
    }

    #[test]
    fn thresholds() {
        let h = hb(1_000_000);
        assert_eq!(judge(Some(&h), 1_000_000), Health::Online);
        assert_eq!(judge(Some(&h), 1_037_500), Health::Online);
        assert_eq!(judge(Some(&h), 1_037_501), Health::Late);
        assert_eq!(judge(Some(&h), 1_060_000), Health::Late);
        assert_eq!(judge(Some(&h), 1_060_001), Health::Offline);
        assert_eq!(judge(None, 0), Health::Offline);
        // A clock behind the agent's still reads as online, not as an overflow.
        assert_eq!(judge(Some(&hb(u64::MAX)), 5), Health::Online);
    }
}
