//! What the agent must remember across restarts: the commands it has accepted (so none
//! runs twice) and its message sequence. Written atomically before every step it guards.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ferry_mailbox::store::folder::write_atomic;
use serde::{Deserialize, Serialize};

/// How many accepted commands are remembered to tell a replay from a reorder.
const REMEMBERED: usize = 256;

/// A command the agent accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Its sequence number.
    pub seq: u64,
    /// Its id.
    pub command_id: String,
    /// Whether its file was deleted from the mailbox after it ran.
    pub deleted: bool,
}

/// The persistent state, in `state_dir/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    /// Highest command seq accepted; any seq at or below it is refused.
    pub last_seq: u64,
    /// The command being executed, if the agent stopped during it.
    pub running: Option<Accepted>,
    /// Recently accepted commands, newest last.
    pub accepted: VecDeque<Accepted>,
    /// Seq of the last message written to the spool.
    pub message_seq: u64,
}

impl AgentState {
    /// The accepted command with this seq, if still remembered.
    pub fn find(&self, seq: u64) -> Option<&Accepted> {
        self.accepted.iter().rev().find(|a| a.seq == seq)
    }

    /// Whether command `command_id` was accepted (and is still remembered).
    pub fn knows(&self, command_id: &str) -> bool {
        self.accepted.iter().any(|a| a.command_id == command_id)
    }

    /// Records a command as accepted (before it runs).
    pub fn accept(&mut self, seq: u64, command_id: &str) {
        let a = Accepted {
            seq,
            command_id: command_id.to_string(),
            deleted: false,
        };
        self.last_seq = self.last_seq.max(seq);
        self.running = Some(a.clone());
        self.accepted.push_back(a);
        while self.accepted.len() > REMEMBERED {
            self.accepted.pop_front();
        }
    }

    /// Records a command taken out of turn while another runs (a cancel of it): never
    /// run again, without passing the seq of commands sent before it.
    pub fn accept_out_of_turn(&mut self, seq: u64, command_id: &str) {
        self.accepted.push_back(Accepted {
            seq,
            command_id: command_id.to_string(),
            deleted: false,
        });
        while self.accepted.len() > REMEMBERED {
            self.accepted.pop_front();
        }
    }

    /// Marks an accepted command's file as deleted from the mailbox.
    pub fn mark_deleted(&mut self, seq: u64) {
        if let Some(a) = self.accepted.iter_mut().rev().find(|a| a.seq == seq) {
            a.deleted = true;
        }
    }
}

/// The state file plus the spool folder of messages not yet stored.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (and creates) the state folder.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("spool"))
            .with_context(|| format!("creating agent state folder {}", dir.display()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Loads the state; a fresh state when there is none yet.
    pub fn load(&self) -> Result<AgentState> {
        let path = self.dir.join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "agent state {} is damaged; the agent will not guess which commands already ran. \
                     Move it away to start over (already-run commands may then be refused as reordered, never run twice)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Saves the state durably (fsync + rename).
    pub fn save(&self, state: &AgentState) -> Result<()> {
        let path = self.dir.join("state.json");
        let bytes = serde_json::to_vec_pretty(state).context("encoding agent state")?;
        write_atomic(&path, &bytes, 0o600).with_context(|| format!("writing {}", path.display()))
    }

    /// Puts a message into the spool under its store file name.
    pub fn spool(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join("spool").join(name);
        write_atomic(&path, bytes, 0o600).with_context(|| format!("spooling {}", path.display()))
    }

    /// Spooled messages, oldest first: `(file name, bytes)`.
    pub fn spooled(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.dir.join("spool");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading spool {}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(dir.join(&n))
                    .with_context(|| format!("reading spooled message {n}"))?;
                Ok((n, bytes))
            })
            .collect()
    }

    /// Removes a message from the spool once it is stored.
    pub fn unspool(&self, name: &str) -> Result<()> {
        let path = self.dir.join("spool").join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reload_and_spool_keeps_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sd = StateDir::open(dir.path()).expect("open");
        let mut s = sd.load().expect("fresh");
        s.accept(5, "c5");
        sd.save(&s).expect("save");
        let back = sd.load().expect("load");
        assert_eq!(back.last_seq, 5);
        assert_eq!(back.running.as_ref().map(|r| r.seq), Some(5));
        sd.spool("00000000000000000002-b.json", b"2")
            .expect("spool");
        sd.spool("00000000000000000001-a.json", b"1")
            .expect("spool");
        let names: Vec<_> = sd
            .spooled()
            .expect("list")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names[0], "00000000000000000001-a.json");
        sd.unspool(&names[0]).expect("unspool");
        assert_eq!(sd.spooled().expect("list").len(), 1);
        std::fs::write(dir.path().join("state.json"), "{").expect("write");
        assert!(format!("{:#}", sd.load().unwrap_err()).contains("damaged"));
    }
}
