//! The store's key layout (protocol v1). Every key Ferry reads or writes is built here.

/// Top folder of all mailboxes.
pub const MAILBOXES: &str = "mailboxes/";

/// `mailboxes/<agent>/`
pub fn mailbox(agent: &str) -> String {
    format!("{MAILBOXES}{agent}/")
}

/// `mailboxes/<agent>/identity.json`
pub fn identity(agent: &str) -> String {
    format!("{MAILBOXES}{agent}/identity.json")
}

/// `mailboxes/<agent>/status.json`
pub fn status(agent: &str) -> String {
    format!("{MAILBOXES}{agent}/status.json")
}

/// `mailboxes/<agent>/heartbeat.json`
pub fn heartbeat(agent: &str) -> String {
    format!("{MAILBOXES}{agent}/heartbeat.json")
}

/// `mailboxes/<agent>/commands/`
pub fn commands(agent: &str) -> String {
    format!("{MAILBOXES}{agent}/commands/")
}

/// `mailboxes/<agent>/commands/<command>.json`
pub fn command(agent: &str, command: &str) -> String {
    format!("{MAILBOXES}{agent}/commands/{command}.json")
}

/// `mailboxes/<agent>/messages/`
pub fn messages(agent: &str) -> String {
    format!("{MAILBOXES}{agent}/messages/")
}

/// File name of a message: `<seq, 20 digits>-<message-id>.json`, so names sort by seq.
pub fn message_name(seq: u64, message_id: &str) -> String {
    format!("{seq:020}-{message_id}.json")
}

/// `mailboxes/<agent>/messages/<seq>-<id>.json`
pub fn message(agent: &str, seq: u64, message_id: &str) -> String {
    format!("{}{}", messages(agent), message_name(seq, message_id))
}

/// Splits a message file name back into its seq and id.
pub fn parse_message_name(name: &str) -> Option<(u64, &str)> {
    let stem = name.strip_suffix(".json")?;
    let (seq, id) = stem.split_once('-')?;
    if seq.len() != 20 {
        return None;
    }
    Some((seq.parse().ok()?, id))
}

/// `agents/<agent>/log/<name>`: where a manager records a message before deleting it.
/// The bytes are the message's own, so concurrent managers write identical content.
pub fn agent_log(agent: &str, name: &str) -> String {
    format!("agents/{agent}/log/{name}")
}

/// `agents/<agent>/replies/<command>/`: recorded answers to one command, by message name.
pub fn replies(agent: &str, command: &str) -> String {
    format!("agents/{agent}/replies/{command}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_sort_by_seq_and_parse_back() {
        let a = message_name(9, "x");
        let b = message_name(10, "y");
        assert!(a < b);
        assert_eq!(parse_message_name(&b), Some((10, "y")));
        assert_eq!(parse_message_name("garbage.json"), None);
        assert_eq!(parse_message_name("12-x.json"), None);
    }
}
