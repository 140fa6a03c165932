//! The agent's lasting identity: a 256-bit id and its key pairs, kept in the state folder.

use std::path::Path;

use anyhow::{Context, Result};
use ferry_mailbox::seal::{KeyPair, random_bytes};
use ferry_mailbox::store::folder::write_atomic;
use ferry_model::protocol::{Fingerprint, check_agent_id};

/// Reads the agent id from `state_dir/agent-id`, or makes one and saves it.
///
/// The id is BLAKE3 of 32 random bytes and the machine's fingerprint: unguessable thanks
/// to the random part, and distinct for clones of one disk image that later re-key.
pub fn load_or_create_id(state_dir: &Path, fingerprint: &Fingerprint) -> Result<String> {
    let path = state_dir.join("agent-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim().to_string();
        check_agent_id(&id).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); delete it to make a new identity",
                path.display()
            )
        })?;
        return Ok(id);
    }
    let mut hasher = blake3::Hasher::new_derive_key("ferry agent id v1");
    hasher.update(&random_bytes::<32>());
    hasher.update(&serde_json::to_vec(fingerprint).unwrap_or_default());
    let id = data_encoding::BASE32_NOPAD
        .encode(hasher.finalize().as_bytes())
        .to_ascii_lowercase();
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating state folder {}", state_dir.display()))?;
    write_atomic(&path, format!("{id}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// Reads the agent's key pairs from `state_dir/keys`, or makes them.
pub fn load_or_create_keys(state_dir: &Path) -> Result<KeyPair> {
    KeyPair::load_or_create(&state_dir.join("keys"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_stable_and_well_formed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_id(dir.path(), &Fingerprint::default()).expect("id");
        assert!(check_agent_id(&a).is_ok(), "{a}");
        let b = load_or_create_id(dir.path(), &Fingerprint::default()).expect("id");
        assert_eq!(a, b);
        let other = tempfile::tempdir().expect("tempdir");
        let c = load_or_create_id(other.path(), &Fingerprint::default()).expect("id");
        assert_ne!(a, c, "the random part makes ids distinct");
        std::fs::write(dir.path().join("agent-id"), "bad").expect("write");
        assert!(load_or_create_id(dir.path(), &Fingerprint::default()).is_err());
    }
}
