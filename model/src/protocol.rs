//! Mailbox protocol v1: the documents agents and managers exchange through the store.
//!
//! Every document carries `schema` so that an old agent and a newer manager can tell
//! what they read. Signed documents travel inside a [`Signed`] envelope whose payload
//! is the exact JSON bytes that were signed, so no canonical form is needed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const SCHEMA: u32 = 1;

/// Length of an agent id: 256 bits in unpadded lowercase base32.
pub const AGENT_ID_LEN: usize = 52;

/// Longest accepted document, in bytes. Anything bigger is refused unread.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Why a document from the store was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocumentError {
    /// The bytes are not the JSON of the expected document.
    #[error("not a valid {kind} document: {detail}")]
    Malformed {
        /// Which document was expected.
        kind: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// The document is larger than [`MAX_DOCUMENT_BYTES`].
    #[error("{kind} document is {size} bytes, more than the {MAX_DOCUMENT_BYTES} allowed")]
    TooLarge {
        /// Which document was expected.
        kind: &'static str,
        /// Its size.
        size: usize,
    },
    /// The document speaks a protocol version this build does not know.
    #[error("{kind} document has schema {found}, this build speaks {SCHEMA}: upgrade the reader")]
    Schema {
        /// Which document was expected.
        kind: &'static str,
        /// The schema it declared.
        found: u32,
    },
    /// A field holds a value outside its allowed form.
    #[error("{kind} document has an invalid {field}: {detail}")]
    Invalid {
        /// Which document was expected.
        kind: &'static str,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

/// A document that can be read from store bytes with size, schema and field checks.
pub trait Document: Sized + for<'de> Deserialize<'de> + Serialize {
    /// Human name used in errors.
    const KIND: &'static str;

    /// The schema the document declares.
    fn schema(&self) -> u32;

    /// Field checks beyond what serde enforces.
    fn validate(&self) -> Result<(), DocumentError> {
        Ok(())
    }

    /// The error for a field outside its allowed form.
    fn invalid(field: &'static str, detail: String) -> DocumentError {
        DocumentError::Invalid {
            kind: Self::KIND,
            field,
            detail,
        }
    }

    /// Parses and validates bytes read from the store.
    fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(DocumentError::TooLarge {
                kind: Self::KIND,
                size: bytes.len(),
            });
        }
        let doc: Self = serde_json::from_slice(bytes).map_err(|e| DocumentError::Malformed {
            kind: Self::KIND,
            detail: e.to_string(),
        })?;
        if doc.schema() != SCHEMA {
            return Err(DocumentError::Schema {
                kind: Self::KIND,
                found: doc.schema(),
            });
        }
        doc.validate()?;
        Ok(doc)
    }

    /// Serialises the document for the store.
    fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data structs with string keys cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// Checks that `id` has the form of an agent id (52 chars of lowercase base32).
pub fn check_agent_id(id: &str) -> Result<(), String> {
    if id.len() != AGENT_ID_LEN {
        return Err(format!(
            "agent id must be {AGENT_ID_LEN} characters, got {}",
            id.len()
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    {
        return Err("agent id must be lowercase base32 (a-z, 2-7)".into());
    }
    Ok(())
}

/// Checks a document's `agent_id` field, naming the document in the error.
fn agent_id_field(kind: &'static str, id: &str) -> Result<(), DocumentError> {
    check_agent_id(id).map_err(|detail| DocumentError::Invalid {
        kind,
        field: "agent_id",
        detail,
    })
}

/// Checks a command or message id: 1–64 chars of `[A-Za-z0-9-]`.
pub fn check_object_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("id must be 1 to 64 characters, got {}", id.len()));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("id may hold only letters, digits and '-'".into());
    }
    Ok(())
}

/// Where an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// Installed on a live server.
    Installed,
    /// The main program of the Ferry ramdisk.
    Ramdisk,
}

impl std::fmt::Display for AgentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentKind::Installed => "installed",
            AgentKind::Ramdisk => "ramdisk",
        })
    }
}

/// Facts that let a manager recognise the same machine again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SMBIOS system UUID, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    /// Hardware addresses of the NICs.
    #[serde(default)]
    pub macs: Vec<String>,
    /// Serial numbers of the disks.
    #[serde(default)]
    pub disk_serials: Vec<String>,
}

/// `mailboxes/<id>/identity.json`: written once by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Protocol version.
    pub schema: u32,
    /// The agent's id; equals the mailbox name.
    pub agent_id: String,
    /// Installed or ramdisk.
    pub kind: AgentKind,
    /// Ed25519 public key (base64) that signs the agent's messages.
    pub sign_key: String,
    /// X25519 public key (base64) that secrets in commands are sealed to.
    pub seal_key: String,
    /// Machine facts for matching.
    pub fingerprint: Fingerprint,
    /// Host name at first start.
    pub hostname: String,
    /// Agent build version.
    pub agent_version: String,
    /// Unix milliseconds when the identity was made.
    pub created_ms: u64,
}

impl Document for Identity {
    const KIND: &'static str = "identity";
    fn schema(&self) -> u32 {
        self.schema
    }
    fn validate(&self) -> Result<(), DocumentError> {
        agent_id_field(Self::KIND, &self.agent_id)
    }
}

/// `mailboxes/<id>/heartbeat.json`: rewritten by the agent every interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Protocol version.
    pub schema: u32,
    /// The agent's id.
    pub agent_id: String,
    /// Increases by one per heartbeat since the agent started.
    pub seq: u64,
    /// Unix milliseconds when written.
    pub at_ms: u64,
    /// The agent's nominal heartbeat interval in milliseconds.
    pub interval_ms: u64,
}

impl Document for Heartbeat {
    const KIND: &'static str = "heartbeat";
    fn schema(&self) -> u32 {
        self.schema
    }
    fn validate(&self) -> Result<(), DocumentError> {
        agent_id_field(Self::KIND, &self.agent_id)?;
        if self.interval_ms == 0 {
            return Err(DocumentError::Invalid {
                kind: Self::KIND,
                field: "interval_ms",
                detail: "must be greater than zero".into(),
            });
        }
        Ok(())
    }
}

/// Progress of long work.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
    /// Bytes per second, recent average.
    pub rate: u64,
    /// Seconds left, estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Files done, for work on files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
}

/// An error an agent reports in its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedError {
    /// Stable code for programs, e.g. `store-unreachable`.
    pub code: String,
    /// A sentence for people.
    pub text: String,
    /// Unix milliseconds when it happened.
    pub at_ms: u64,
}

/// `mailboxes/<id>/status.json`: rewritten by the agent when something changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Protocol version.
    pub schema: u32,
    /// The agent's id.
    pub agent_id: String,
    /// Installed or ramdisk.
    pub kind: AgentKind,
    /// What the agent is doing, e.g. `idle`, `executing`.
    pub phase: String,
    /// Finer step inside the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Progress of the current step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The last error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<ReportedError>,
    /// Sequence number of the last command the agent accepted.
    pub last_command_seq: u64,
    /// The machine inventory.
    pub survey: crate::survey::Survey,
    /// How the ramdisk brought the machine up (ramdisk agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootReport>,
    /// Unix milliseconds when written.
    pub updated_ms: u64,
}

/// What the ramdisk's init did before the agent loop started: drivers and network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootReport {
    /// Modules loaded, in order.
    pub loaded: Vec<String>,
    /// Modules that failed to load, with the kernel's reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<ModuleFailure>,
    /// Devices whose driver the kernel has but the ramdisk left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<MissingDriver>,
    /// How networking came up, e.g. `dhcp eth0 10.0.2.15/24` or `static eth0 192.0.2.10/24`.
    pub network: String,
    /// Problems with `ferry.*` kernel parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Milliseconds from kernel start to the agent loop.
    pub uptime_ms: u64,
    /// How the machine came into this ramdisk when its installed agent put it there
    /// (`ferry boot-ramdisk`); absent after a PXE, ISO or direct boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered: Option<Entered>,
}

/// How a server's installed agent put it into the ramdisk, as the ramdisk reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entered {
    /// The method used.
    pub method: BootMethod,
    /// The command that did it.
    pub command_id: String,
    /// The running kernel's release (the server's own).
    pub kernel_release: String,
}

/// A module the kernel refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleFailure {
    /// The module.
    pub module: String,
    /// Why, as the kernel said it.
    pub error: String,
}

/// A device with no driver in the ramdisk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingDriver {
    /// The device's sysfs path, e.g. `/sys/devices/pci0000:00/0000:00:03.0`.
    pub device: String,
    /// Its modalias.
    pub modalias: String,
    /// The modules of the full kernel that would drive it.
    pub modules: Vec<String>,
}

impl Document for Status {
    const KIND: &'static str = "status";
    fn schema(&self) -> u32 {
        self.schema
    }
    fn validate(&self) -> Result<(), DocumentError> {
        agent_id_field(Self::KIND, &self.agent_id)
    }
}

/// The envelope of a signed document: the payload bytes and an Ed25519 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    /// Protocol version.
    pub schema: u32,
    /// Base64 of the exact JSON bytes that were signed.
    pub payload: String,
    /// Base64 Ed25519 signature over the domain tag and the payload bytes.
    pub signature: String,
}

impl Document for Signed {
    const KIND: &'static str = "signed envelope";
    fn schema(&self) -> u32 {
        self.schema
    }
}

/// A secret sealed to one agent's X25519 key (ephemeral X25519 + XChaCha20-Poly1305).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Base64 of the sender's ephemeral X25519 public key.
    pub ephemeral: String,
    /// Base64 of the 24-byte nonce.
    pub nonce: String,
    /// Base64 of the ciphertext with its tag.
    pub ciphertext: String,
}

/// What a command asks the agent to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Answer at once with a pong.
    Ping {
        /// Manager's clock when sent, unix ms.
        sent_ms: u64,
    },
    /// Work for a while, then answer; used to test crash and progress handling.
    Sleep {
        /// How long, in milliseconds.
        millis: u64,
    },
    /// Decrypt the named secret and answer with its BLAKE3 digest (proves the seal).
    CheckSecret {
        /// Key into [`CommandPayload::secrets`].
        name: String,
    },
    /// Stop command `command_id` if it runs here: a capture or restore stops at its
    /// next chunk of data, a deploy at its next step (and wipes what it made unless
    /// its plan keeps it), each answering failed with code `cancelled`. One that has
    /// not started yet is answered so without running. The cancel itself is answered
    /// done at once, saying which it was.
    Cancel {
        /// The id of the command to stop.
        command: String,
    },
    /// Power the machine off (ramdisk) or stop the agent (installed).
    Poweroff,
    /// Reboot the machine (ramdisk) or restart the agent (installed).
    Reboot,
    /// Take the full survey again and publish it in the status.
    Survey,
    /// Capture this server into an image. Secrets: [`SECRET_LIBRARY_PASSWORD`] and,
    /// for a library on S3 or WebDAV, [`SECRET_LIBRARY_CREDENTIAL`].
    Capture {
        /// The image's name.
        image: String,
        /// Where the library is, as this agent reaches it.
        library: LibraryRef,
        /// Mount points to capture; empty: every local, persistent filesystem.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        paths: Vec<String>,
        /// Globs of paths to leave out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        excludes: Vec<String>,
        /// Read live, without taking snapshots.
        #[serde(default)]
        live: bool,
        /// Where no snapshot can be taken, freeze each filesystem while it is read,
        /// for at most this many seconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        freeze: Option<u32>,
        /// Devices whose block data is captured (not mounted ones). With no
        /// `paths`, only these are captured.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        raw: Vec<String>,
        /// The capture's id, fixed by the manager so that a deploy can follow the
        /// capture; a new one when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capture: Option<String>,
        /// Write partial manifests as it goes, for a deploy that follows it (a
        /// direct migration).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        progressive: bool,
    },
    /// Restore one filesystem of an image into a directory on this machine. Secrets
    /// as for [`Action::Capture`].
    Restore {
        /// The image's name.
        image: String,
        /// Where the library is, as this agent reaches it.
        library: LibraryRef,
        /// A capture id of the image; the latest when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capture: Option<String>,
        /// The filesystem's path in the image, e.g. `/`.
        fs: String,
        /// The directory to restore into.
        to: String,
        /// Restore over what is in the directory already.
        #[serde(default)]
        overwrite: bool,
    },
    /// Boot this server into the Ferry ramdisk made for it (installed agents only):
    /// the base from the store, the server's own running kernel and its drivers, its
    /// network configuration and this agent's identity; then reboot by `method`. The
    /// agent answers [`MessageBody::RamdiskPrepared`] first.
    BootRamdisk {
        /// How to enter the ramdisk.
        method: BootMethod,
        /// The published ramdisk base.
        base: RamdiskBase,
        /// The ramdisk reboots (back into this system, whatever the method) when its
        /// agent has not reached the store this many seconds after the kernel started.
        fallback_secs: u32,
        /// Only make the ramdisk and say which method would be used and why; change
        /// nothing on the server.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        check: bool,
    },
    /// Lay out this machine's disks by the plan, restore its image, configure it and
    /// make it boot (ramdisk agents only: it wipes the planned disks). Secrets as for
    /// [`Action::Capture`].
    Deploy {
        /// Where the library is, as this agent reaches it.
        library: LibraryRef,
        /// What to do.
        plan: Box<crate::deploy::DeployPlan>,
        /// Reboot into the deployed system when done.
        #[serde(default)]
        reboot: bool,
    },
}

/// How an installed agent enters the ramdisk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// The safest method that works here: grub-once, else kexec, else init.
    #[default]
    Auto,
    /// A GRUB entry used for the next boot only; the default entry is untouched, so a
    /// reset after a ramdisk that never reports boots the server's own system.
    GrubOnce,
    /// Load the kernel and ramdisk and jump into them, without firmware or boot loader.
    Kexec,
    /// For a server started without a boot loader (a hypervisor's direct kernel
    /// boot): the init the kernel starts is replaced by a shim that puts its original
    /// back and enters the ramdisk.
    Init,
}

impl BootMethod {
    /// Whether this is [`BootMethod::Auto`].
    pub fn is_auto(&self) -> bool {
        *self == BootMethod::Auto
    }

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BootMethod::Auto => "auto",
            BootMethod::GrubOnce => "grub-once",
            BootMethod::Kexec => "kexec",
            BootMethod::Init => "init",
        }
    }
}

impl std::fmt::Display for BootMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BootMethod {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [
            BootMethod::Auto,
            BootMethod::GrubOnce,
            BootMethod::Kexec,
            BootMethod::Init,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| format!("boot method {s:?} is not one of auto, grub-once, kexec, init"))
    }
}

/// Where a published ramdisk base is in the store (the manager publishes it under
/// `boot/<sha256>/`), with the digests the agent checks what it reads against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RamdiskBase {
    /// Store key of the base (`initrd-base.zst`).
    pub key: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Store key of its build information (`initrd-base.json`).
    pub info_key: String,
    /// That file's SHA-256, hex.
    pub info_sha256: String,
}

/// Name of the sealed secret holding a library's repository password.
pub const SECRET_LIBRARY_PASSWORD: &str = "library-password";
/// Name of the sealed secret holding the store credential scoped to the library, as
/// JSON `{"access_key": …, "secret_key": …}`.
pub const SECRET_LIBRARY_CREDENTIAL: &str = "library-credential";

/// A library's location as a command carries it. The repository password and the
/// store credential travel as sealed secrets, never here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibraryRef {
    /// A folder, `s3+https://HOST:PORT/BUCKET[/FOLDER]` or `dav+https://HOST:PORT/PATH`.
    pub url: String,
    /// The CA certificate (PEM) the store's certificate must chain to, when it is not
    /// publicly trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// A store credential in a sealed secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreCredential {
    /// Access key id (S3) or user name (WebDAV).
    pub access_key: String,
    /// Secret key or password.
    pub secret_key: String,
}

impl Action {
    /// Short name for logs and tables.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Ping { .. } => "ping",
            Action::Sleep { .. } => "sleep",
            Action::CheckSecret { .. } => "check-secret",
            Action::Cancel { .. } => "cancel",
            Action::Poweroff => "poweroff",
            Action::Reboot => "reboot",
            Action::Survey => "survey",
            Action::Capture { .. } => "capture",
            Action::Restore { .. } => "restore",
            Action::Deploy { .. } => "deploy",
            Action::BootRamdisk { .. } => "boot-ramdisk",
        }
    }
}

/// The signed content of `mailboxes/<id>/commands/<command-id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandPayload {
    /// Protocol version.
    pub schema: u32,
    /// The one agent this command is for.
    pub agent_id: String,
    /// Equals the file name without `.json`.
    pub command_id: String,
    /// Strictly increasing per agent; an agent refuses a seq it has passed.
    pub seq: u64,
    /// Unix ms when issued.
    pub issued_ms: u64,
    /// Unix ms after which the agent must refuse it.
    pub expires_ms: u64,
    /// What to do.
    #[serde(flatten)]
    pub action: Action,
    /// Secrets sealed to the agent, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, Sealed>,
}

impl Document for CommandPayload {
    const KIND: &'static str = "command";
    fn schema(&self) -> u32 {
        self.schema
    }
    fn validate(&self) -> Result<(), DocumentError> {
        let invalid = |field, detail| DocumentError::Invalid {
            kind: Self::KIND,
            field,
            detail,
        };
        check_agent_id(&self.agent_id).map_err(|d| invalid("agent_id", d))?;
        check_object_id(&self.command_id).map_err(|d| invalid("command_id", d))?;
        if self.seq == 0 {
            return Err(invalid("seq", "must be greater than zero".into()));
        }
        if self.expires_ms <= self.issued_ms {
            return Err(invalid("expires_ms", "must be after issued_ms".into()));
        }
        if let Action::BootRamdisk {
            base,
            fallback_secs,
            ..
        } = &self.action
        {
            base.check().map_err(|(field, d)| invalid(field, d))?;
            if *fallback_secs < 60 {
                return Err(invalid(
                    "fallback_secs",
                    format!(
                        "{fallback_secs} s is too short for a ramdisk to reach the store; give at least 60"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl RamdiskBase {
    /// Keys under `boot/`, digests as SHA-256 hex.
    fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, key) in [("base.key", &self.key), ("base.info_key", &self.info_key)] {
            let parts: Vec<&str> = key.split('/').collect();
            if parts.first() != Some(&"boot")
                || parts.len() < 2
                || parts
                    .iter()
                    .any(|p| p.is_empty() || *p == "." || *p == "..")
            {
                return Err((field, format!("{key:?} is not a store key under boot/")));
            }
        }
        for (field, hex) in [
            ("base.sha256", &self.sha256),
            ("base.info_sha256", &self.info_sha256),
        ] {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err((field, format!("{hex:?} is not a SHA-256 in hex")));
            }
        }
        Ok(())
    }
}

/// Why an agent refused a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// Not JSON, or not a command.
    Malformed,
    /// The signature does not verify against the pinned manager key.
    BadSignature,
    /// Signed for another agent or stored under another command id.
    Misaddressed,
    /// Its sequence number was already executed (the same command again).
    Replayed,
    /// Its sequence number is lower than one already executed.
    Reordered,
    /// Past its expiry.
    Expired,
    /// A sealed secret did not open.
    BadSecret,
}

impl Refusal {
    /// Stable code for programs.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadSignature => "bad-signature",
            Refusal::Misaddressed => "misaddressed",
            Refusal::Replayed => "replayed",
            Refusal::Reordered => "reordered",
            Refusal::Expired => "expired",
            Refusal::BadSecret => "bad-secret",
        }
    }
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum MessageBody {
    /// Answer to a ping.
    Pong {
        /// Copied from the ping.
        sent_ms: u64,
        /// Agent's clock when the ping was read.
        received_ms: u64,
    },
    /// A command finished.
    Done {
        /// Action name.
        action: String,
        /// A line for people.
        detail: String,
    },
    /// A capture finished: the image now has this capture.
    Captured {
        /// The image.
        image: String,
        /// The new capture's id.
        capture: String,
        /// What each filesystem's capture holds.
        filesystems: Vec<crate::image::FsImage>,
        /// What a restore should know, e.g. filesystems read live.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// A restore finished with every entry restored.
    Restored {
        /// The image.
        image: String,
        /// The capture restored.
        capture: String,
        /// The filesystem's path in the image.
        fs: String,
        /// Where it was restored.
        to: String,
        /// What was restored.
        report: crate::image::RestoreReport,
    },
    /// A deploy finished: the machine holds the image and boots it.
    Deployed {
        /// The image.
        image: String,
        /// The capture deployed.
        capture: String,
        /// Each step and how long it took.
        steps: Vec<crate::deploy::StepTime>,
        /// Driver modules added to the deployed kernel.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        drivers_added: Vec<String>,
    },
    /// A boot-ramdisk command made the server's ramdisk; unless it only checked, the
    /// server now reboots into it.
    RamdiskPrepared {
        /// The method chosen.
        method: BootMethod,
        /// Why that method (for `auto`: why not the safer ones).
        why: String,
        /// The kernel the ramdisk runs (the server's own).
        kernel_release: String,
        /// Driver modules of that kernel put in.
        modules: u32,
        /// The ramdisk's size in bytes.
        bytes: u64,
        /// Whether the server is rebooting into it (false when only checked).
        rebooting: bool,
        /// What the ramdisk will lack, e.g. addresses it cannot bring up.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// A command failed while running.
    Failed {
        /// Action name.
        action: String,
        /// Stable code.
        code: String,
        /// A sentence for people.
        text: String,
    },
    /// A command was refused and not run.
    Refused {
        /// The store key of the refused file.
        key: String,
        /// Why.
        reason: Refusal,
        /// A sentence for people.
        text: String,
    },
    /// A command was running when the agent stopped; it will not be run again.
    Interrupted {
        /// Sequence number of the command.
        seq: u64,
    },
    /// Anything else worth a person's attention.
    Alert {
        /// Stable code.
        code: String,
        /// A sentence for people.
        text: String,
    },
}

/// The signed content of `mailboxes/<id>/messages/<seq>-<message-id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePayload {
    /// Protocol version.
    pub schema: u32,
    /// The agent that wrote it.
    pub agent_id: String,
    /// Strictly increasing per agent, also in the file name.
    pub seq: u64,
    /// Unique id, also in the file name.
    pub message_id: String,
    /// Unix ms when written.
    pub at_ms: u64,
    /// The command this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_reply_to: Option<String>,
    /// What it says.
    pub body: MessageBody,
}

impl Document for MessagePayload {
    const KIND: &'static str = "message";
    fn schema(&self) -> u32 {
        self.schema
    }
    fn validate(&self) -> Result<(), DocumentError> {
        let invalid = |field, detail| DocumentError::Invalid {
            kind: Self::KIND,
            field,
            detail,
        };
        check_agent_id(&self.agent_id).map_err(|d| invalid("agent_id", d))?;
        check_object_id(&self.message_id).map_err(|d| invalid("message_id", d))?;
        if let Some(c) = &self.in_reply_to {
            check_object_id(c).map_err(|d| invalid("in_reply_to", d))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id() -> String {
        "a".repeat(AGENT_ID_LEN)
    }

    fn command(action: Action) -> CommandPayload {
        CommandPayload {
            schema: SCHEMA,
            agent_id: id(),
            command_id: "c-1".into(),
            seq: 7,
            issued_ms: 1,
            expires_ms: 2,
            action,
            secrets: BTreeMap::new(),
        }
    }

    #[test]
    fn command_round_trips_and_validates() {
        // Every action's fields sit beside the command's own: none may share a name.
        for action in [
            Action::Sleep { millis: 5 },
            Action::Cancel {
                command: "c-0".into(),
            },
            Action::Poweroff,
        ] {
            let c = command(action);
            let back = CommandPayload::parse(&c.to_bytes()).expect("parses");
            assert_eq!(back, c);
        }
        let c = command(Action::Sleep { millis: 5 });
        let bad = CommandPayload { seq: 0, ..c };
        assert!(matches!(
            CommandPayload::parse(&bad.to_bytes()),
            Err(DocumentError::Invalid { field: "seq", .. })
        ));
    }

    #[test]
    fn image_commands_and_answers_round_trip() {
        use crate::image::{Consistency, FsImage, RestoreReport, RootMeta};
        let library = LibraryRef {
            url: "s3+https://10.0.2.2:7443/ferry/library".into(),
            ca_pem: Some("-----BEGIN CERTIFICATE-----".into()),
        };
        for action in [
            Action::Capture {
                image: "web".into(),
                library: library.clone(),
                paths: vec!["/".into(), "/var".into()],
                excludes: vec!["/var/cache/**".into()],
                live: false,
                freeze: Some(60),
                raw: vec!["/dev/vg0/db".into()],
                capture: Some("0194f2c3-aaaa-7bbb-8ccc-0123456789ab-1".into()),
                progressive: true,
            },
            Action::Restore {
                image: "web".into(),
                library: library.clone(),
                capture: Some("01ab".into()),
                fs: "/".into(),
                to: "/mnt/target".into(),
                overwrite: true,
            },
            Action::Deploy {
                library,
                plan: Box::new(crate::deploy::examples::plan()),
                reboot: true,
            },
        ] {
            let c = command(action);
            assert_eq!(CommandPayload::parse(&c.to_bytes()).expect("parses"), c);
        }
        // Times before 1970 and with nanoseconds; every field through the tagged enum.
        let fs = FsImage {
            path: "/".into(),
            snapshot: "ab".repeat(32),
            fstype: Some("ext4".into()),
            consistency: Consistency::LvmSnapshot,
            files: 3,
            bytes: 4,
            added_bytes: 5,
            raw: false,
            fingerprint: Some("a0".repeat(32)),
            root: RootMeta {
                mode: 0o1777,
                uid: 1,
                gid: 2,
                mtime_ns: -1_234_567_890_123,
                atime_ns: 1_700_000_000_123_456_789,
                xattrs: vec![("user.a".into(), "00ff".into())],
            },
        };
        for body in [
            MessageBody::Captured {
                image: "web".into(),
                capture: "01ab".into(),
                filesystems: vec![fs],
                warnings: vec!["/boot was read live".into()],
            },
            MessageBody::Restored {
                image: "web".into(),
                capture: "01ab".into(),
                fs: "/".into(),
                to: "/mnt/target".into(),
                report: RestoreReport {
                    files: 9,
                    errors: vec!["x: failed".into()],
                    error_count: 1,
                    ..Default::default()
                },
            },
            MessageBody::Deployed {
                image: "web".into(),
                capture: "01ab".into(),
                steps: vec![crate::deploy::StepTime {
                    step: "partition".into(),
                    millis: 812,
                }],
                drivers_added: vec!["virtio_blk".into()],
            },
        ] {
            answer_round_trips(body);
        }
    }

    /// An answer to command `c-1` with `body` parses back to itself.
    fn answer_round_trips(body: MessageBody) {
        let m = MessagePayload {
            schema: SCHEMA,
            agent_id: id(),
            seq: 1,
            message_id: "m-1".into(),
            at_ms: 5,
            in_reply_to: Some("c-1".into()),
            body,
        };
        assert_eq!(MessagePayload::parse(&m.to_bytes()).expect("parses"), m);
    }

    fn ramdisk_base() -> RamdiskBase {
        RamdiskBase {
            key: format!("boot/{}/initrd-base.zst", "ab".repeat(32)),
            sha256: "ab".repeat(32),
            bytes: 17_000_000,
            info_key: format!("boot/{}/initrd-base.json", "ab".repeat(32)),
            info_sha256: "cd".repeat(32),
        }
    }

    #[test]
    fn boot_ramdisk_round_trips_and_its_base_is_checked() {
        let action = |base, fallback_secs| Action::BootRamdisk {
            method: BootMethod::GrubOnce,
            base,
            fallback_secs,
            check: false,
        };
        let c = command(action(ramdisk_base(), 600));
        let text = String::from_utf8(c.to_bytes()).unwrap();
        assert!(text.contains(r#""method": "grub-once""#), "{text}");
        assert_eq!(CommandPayload::parse(&c.to_bytes()).expect("parses"), c);
        for (base, field) in [
            (
                RamdiskBase {
                    key: "mailboxes/x/../../library/config".into(),
                    ..ramdisk_base()
                },
                "base.key",
            ),
            (
                RamdiskBase {
                    info_sha256: "zz".into(),
                    ..ramdisk_base()
                },
                "base.info_sha256",
            ),
        ] {
            let bad = command(action(base, 600));
            assert!(
                matches!(CommandPayload::parse(&bad.to_bytes()), Err(DocumentError::Invalid { field: f, .. }) if f == field),
                "{field}"
            );
        }
        let short = command(action(ramdisk_base(), 5));
        assert!(matches!(
            CommandPayload::parse(&short.to_bytes()),
            Err(DocumentError::Invalid {
                field: "fallback_secs",
                ..
            })
        ));
        for m in ["auto", "grub-once", "kexec", "init"] {
            assert_eq!(m.parse::<BootMethod>().unwrap().name(), m);
        }
        assert!(
            "pxe"
                .parse::<BootMethod>()
                .unwrap_err()
                .contains("grub-once")
        );
        let answer = MessageBody::RamdiskPrepared {
            method: BootMethod::Kexec,
            why: "no GRUB".into(),
            kernel_release: "6.1.0-40-cloud-amd64".into(),
            modules: 212,
            bytes: 31_000_000,
            rebooting: true,
            warnings: vec!["ens5: 1 IPv6 address(es)".into()],
        };
        answer_round_trips(answer);
    }

    #[test]
    fn unknown_schema_is_named() {
        let hb = Heartbeat {
            schema: 9,
            agent_id: id(),
            seq: 1,
            at_ms: 1,
            interval_ms: 1,
        };
        let err = Heartbeat::parse(&hb.to_bytes()).unwrap_err();
        assert_eq!(
            err,
            DocumentError::Schema {
                kind: "heartbeat",
                found: 9
            }
        );
    }

    #[test]
    fn truncated_json_is_malformed() {
        let hb = Heartbeat {
            schema: 1,
            agent_id: id(),
            seq: 1,
            at_ms: 1,
            interval_ms: 1,
        }
        .to_bytes();
        let err = Heartbeat::parse(&hb[..hb.len() / 2]).unwrap_err();
        assert!(matches!(
            err,
            DocumentError::Malformed {
                kind: "heartbeat",
                ..
            }
        ));
    }

    #[test]
    fn oversize_is_refused_unread() {
        let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
        assert!(matches!(
            Status::parse(&big),
            Err(DocumentError::TooLarge { .. })
        ));
    }

    #[test]
    fn agent_id_form() {
        assert!(check_agent_id(&id()).is_ok());
        assert!(check_agent_id("short").is_err());
        assert!(check_agent_id(&"A".repeat(AGENT_ID_LEN)).is_err());
        assert!(check_agent_id(&"../".repeat(AGENT_ID_LEN / 3 + 1)[..AGENT_ID_LEN]).is_err());
    }

    proptest! {
        // Every parser of store content must return an error, never panic, on any bytes.
        #[test]
        fn parsers_never_panic_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Identity::parse(&bytes);
            let _ = Status::parse(&bytes);
            let _ = Heartbeat::parse(&bytes);
            let _ = Signed::parse(&bytes);
            let _ = CommandPayload::parse(&bytes);
            let _ = MessagePayload::parse(&bytes);
        }

        // Mutating a valid document's bytes gives a parse error or a valid document, never a panic.
        #[test]
        fn parsers_never_panic_on_mutated_json(pos in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
            let mut doc = CommandPayload {
                schema: SCHEMA, agent_id: id(), command_id: "c".into(), seq: 1,
                issued_ms: 1, expires_ms: 2, action: Action::Ping { sent_ms: 3 },
                secrets: BTreeMap::new(),
            }.to_bytes();
            let p = pos % doc.len();
            doc[p] = byte;
            doc.truncate(cut.max(1).min(doc.len()));
            if let Ok(c) = CommandPayload::parse(&doc) {
                prop_assert!(c.validate().is_ok());
            }
            let _ = MessagePayload::parse(&doc);
            let _ = Status::parse(&doc);
        }
    }
}
