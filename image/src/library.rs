//! A library: where it is, how to open it, and what images it holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ferry_mailbox::store::{self, Store, StoreConfig};
use ferry_model::image::{MANIFEST_PATH, Manifest, check_image_name};
use rustic_core::{
    CheckOptions, ConfigOptions, Credentials, KeyOptions, NoProgressBars, Open, OpenStatus,
    ProgressBars, PruneOptions, Repository, RepositoryBackends, RepositoryOptions, RusticError,
    repofile::SnapshotFile,
};

use crate::backend::StoreBackend;

/// Tag prefix naming the image a snapshot belongs to.
pub const TAG_IMAGE: &str = "ferry-image=";
/// Tag prefix naming the capture a snapshot belongs to.
pub const TAG_CAPTURE: &str = "ferry-capture=";
/// Tag of the snapshot that holds a capture's manifest.
pub const TAG_MANIFEST: &str = "ferry-manifest";
/// Tag of a snapshot holding a partial manifest of a capture in progress.
pub const TAG_PARTIAL: &str = "ferry-partial";

/// How often a restore following a capture looks for what it has written.
const FOLLOW_POLL: Duration = Duration::from_secs(1);

/// What [`Library::create`] found.
enum Made {
    /// This call created the library.
    Created,
    /// One was there already.
    Existed,
    /// Another creator wrote its config while this call was creating one.
    Lost,
}

/// How long [`Library::ensure`] waits for a library another creator is making.
const ENSURE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a library is: a store and a folder in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The store.
    pub store: StoreConfig,
    /// The library's folder in the store: empty or ending in `/`.
    pub prefix: String,
}

impl Location {
    /// Reads a location: a folder (`/srv/library`, `file:///srv/library`),
    /// `s3://HOST:PORT/BUCKET[/FOLDER]` (HTTPS; `s3+http://` for plain HTTP) or
    /// `webdav://HOST:PORT/PATH` (HTTPS; `dav+http://` for plain HTTP). The
    /// credential and CA come from the environment: `FERRY_LIBRARY_ACCESS_KEY`,
    /// `FERRY_LIBRARY_SECRET_KEY`, `FERRY_LIBRARY_CA` (a PEM file).
    pub fn parse(text: &str) -> Result<Location> {
        let mut loc = Location::parse_url(text)?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        loc.store.access_key = env("FERRY_LIBRARY_ACCESS_KEY");
        loc.store.secret_key = env("FERRY_LIBRARY_SECRET_KEY");
        if let Some(ca) = env("FERRY_LIBRARY_CA") {
            loc.store.ca_pem = Some(
                std::fs::read_to_string(&ca)
                    .with_context(|| format!("FERRY_LIBRARY_CA {ca}: cannot read the CA file"))?,
            );
        }
        Ok(loc)
    }

    /// Reads a location from `url`, with the store's CA and credential given.
    pub fn with_access(
        url: &str,
        ca_pem: Option<String>,
        access: Option<(String, String)>,
    ) -> Result<Location> {
        let mut loc = Location::parse_url(url)?;
        loc.store.ca_pem = ca_pem;
        if let Some((key, secret)) = access {
            loc.store.access_key = Some(key);
            loc.store.secret_key = Some(secret);
        }
        Ok(loc)
    }

    /// The local folder, for a library in one.
    pub fn folder(&self) -> Option<PathBuf> {
        let path = Path::new(self.store.url.strip_prefix("file://")?);
        Some(match self.prefix.trim_end_matches('/') {
            "" => path.to_path_buf(),
            prefix => path.join(prefix),
        })
    }

    /// Reads a location without looking at the environment.
    pub fn parse_url(text: &str) -> Result<Location> {
        let store = |url: String| StoreConfig {
            url,
            ..Default::default()
        };
        if let Some(path) = text
            .strip_prefix("file://")
            .or(text.starts_with('/').then_some(text))
        {
            return Ok(Location {
                store: store(format!("file://{}", path.trim_end_matches('/'))),
                prefix: String::new(),
            });
        }
        const SCHEMES: [(&str, &str); 6] = [
            ("s3://", "s3+https://"),
            ("s3+https://", "s3+https://"),
            ("s3+http://", "s3+http://"),
            ("webdav://", "dav+https://"),
            ("dav+https://", "dav+https://"),
            ("dav+http://", "dav+http://"),
        ];
        let Some((scheme, rest)) = SCHEMES
            .iter()
            .find_map(|(given, scheme)| Some((*scheme, text.strip_prefix(given)?)))
        else {
            bail!(
                "library {text:?}: use a folder (/srv/library), s3://HOST:PORT/BUCKET[/FOLDER] or webdav://HOST:PORT/PATH"
            )
        };
        let rest = rest.trim_end_matches('/');
        if scheme.starts_with("dav") {
            if rest.is_empty() || rest.starts_with('/') {
                bail!("library {text:?}: a WebDAV location is webdav://HOST:PORT/PATH");
            }
            return Ok(Location {
                store: store(format!("{scheme}{rest}/")),
                prefix: String::new(),
            });
        }
        let mut parts = rest.splitn(3, '/');
        let (host, bucket) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if host.is_empty() || bucket.is_empty() {
            bail!("library {text:?}: an S3 location is s3://HOST:PORT/BUCKET[/FOLDER]");
        }
        Ok(Location {
            store: store(format!("{scheme}{host}/{bucket}")),
            prefix: parts.next().map(|p| format!("{p}/")).unwrap_or_default(),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.store.url.trim_end_matches('/'))?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix.trim_end_matches('/'))?;
        }
        Ok(())
    }
}

/// One image in a library: its latest capture and how many there are.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSummary {
    /// Image name.
    pub name: String,
    /// Captures (recovery points), oldest first: (capture id, finished time).
    pub captures: Vec<(String, String)>,
    /// The latest capture's manifest (without the survey).
    pub latest: Manifest,
}

/// The images as a table for people: name, captures, latest capture's end, size and
/// filesystems.
pub fn table(images: &[ImageSummary]) -> String {
    let mut out = format!(
        "{:<20} {:>8} {:<24} {:>10}  FILESYSTEMS\n",
        "IMAGE", "CAPTURES", "LATEST", "SIZE"
    );
    for i in images {
        let fs: Vec<&str> = i
            .latest
            .filesystems
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        out += &format!(
            "{:<20} {:>8} {:<24} {:>10}  {}\n",
            i.name,
            i.captures.len(),
            i.latest.finished,
            crate::progress::size(i.latest.bytes()),
            fs.join(" ")
        );
    }
    out
}

/// What a check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Snapshots whose trees were checked.
    pub snapshots: usize,
    /// Damage: missing or corrupt packs, trees or index entries, each named.
    pub errors: Vec<String>,
    /// Findings that do not lose data.
    pub warnings: Vec<String>,
}

/// An open connection to a library. Its calls block; make them from a blocking
/// thread, never from inside an async runtime.
pub struct Library {
    location: Location,
    password: String,
    store: Arc<dyn Store>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Library {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The first lines of a rustic error: its message and cause, without the banner.
pub fn brief(e: &RusticError) -> String {
    brief_text(&e.to_string())
}

/// [`brief`] of an error's text; text without rustic's banner comes back whole, on
/// one line.
pub fn brief_text(text: &str) -> String {
    if !text.contains("Message:") {
        return text.trim().replace('\n', " ");
    }
    let section = |title: &str| -> Option<String> {
        let start = text.find(title)? + title.len();
        let body = text[start..].trim_start_matches('\n');
        let end = body.find("\n\n").unwrap_or(body.len());
        Some(body[..end].trim().replace('\n', " "))
    };
    let message = section("Message:").unwrap_or_default();
    let before = text[..text.find("`rustic_core` experienced").unwrap_or(0)].trim();
    let message = match before {
        "" => message,
        b => format!("{b} {message}"),
    };
    match section("Caused by:") {
        Some(cause) => format!("{message}: {cause}"),
        None => message,
    }
}

/// Turns a rustic error into an error that says what was being done.
pub(crate) fn rustic(
    what: impl std::fmt::Display,
) -> impl FnOnce(Box<RusticError>) -> anyhow::Error {
    move |e| anyhow!("{what}: {}", brief(&e))
}

impl Library {
    /// Connects to the library at `location` with its password. Nothing is read yet.
    pub fn connect(location: &Location, password: &str) -> Result<Library> {
        if password.is_empty() {
            bail!("library {location}: the password is empty");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-library")
            .enable_all()
            .build()
            .context("starting the library's I/O threads")?;
        let store = {
            let _guard = rt.enter();
            store::open(&location.store)?
        };
        Ok(Library {
            location: location.clone(),
            password: password.to_string(),
            store,
            rt: Some(rt),
        })
    }

    /// The library's location.
    pub fn location(&self) -> &Location {
        &self.location
    }

    fn handle(&self) -> tokio::runtime::Handle {
        match &self.rt {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime lives as long as the library"),
        }
    }

    fn backends(&self) -> RepositoryBackends {
        let be = StoreBackend::new(self.store.clone(), &self.location.prefix, self.handle());
        RepositoryBackends::new(Arc::new(be), None)
    }

    /// The library's store as a rustic_core backend, for files Ferry writes itself
    /// ([`crate::archive`]).
    pub(crate) fn write_backend(&self) -> Arc<dyn rustic_core::WriteBackend> {
        self.backends().repository()
    }

    fn options() -> RepositoryOptions {
        let mut opts = RepositoryOptions::default();
        opts.no_cache = true;
        opts
    }

    /// Whether a library exists at the location (its `config` file is there).
    pub fn exists(&self) -> Result<bool> {
        let key = format!("{}config", self.location.prefix);
        let listing = self
            .handle()
            .block_on(self.store.list(&self.location.prefix))
            .with_context(|| format!("library {}", self.location))?;
        Ok(listing
            .objects
            .iter()
            .any(|o| format!("{}{o}", self.location.prefix) == key))
    }

    /// Creates the library (restic repository format 2, compressed). Refuses when one
    /// is there already, also when another creator made it first while this one ran.
    pub fn init(&self) -> Result<()> {
        match self.create()? {
            Made::Created => Ok(()),
            Made::Existed | Made::Lost => {
                bail!("library {}: one exists there already", self.location)
            }
        }
    }

    /// Creates the library unless there is one. Safe to run from several places at
    /// once (manager replicas): one creator wins, the others wait until its library
    /// opens. Returns whether this call created it.
    pub fn ensure(&self) -> Result<bool> {
        match self.create()? {
            Made::Created => return Ok(true),
            Made::Existed => return Ok(false),
            Made::Lost => {}
        }
        let deadline = std::time::Instant::now() + ENSURE_WAIT;
        loop {
            match self.open() {
                Ok(_) => return Ok(false),
                Err(e) if std::time::Instant::now() >= deadline => {
                    return Err(e.context(format!(
                        "library {}: it has a config but has not opened for {} s; if its creator died, \
                         check the store and remove the library's config and keys to create it again",
                        self.location,
                        ENSURE_WAIT.as_secs()
                    )));
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
            }
        }
    }

    /// Creates the library unless one is there.
    fn create(&self) -> Result<Made> {
        if self.exists()? {
            // A config without a key is a creator between its two writes (or one that
            // died there): wait for it like a lost race.
            return Ok(if self.has_key()? {
                Made::Existed
            } else {
                Made::Lost
            });
        }
        let be = Arc::new(StoreBackend::creating(
            self.store.clone(),
            &self.location.prefix,
            self.handle(),
        ));
        let made = Repository::new(&Self::options(), &RepositoryBackends::new(be.clone(), None))
            .map_err(rustic(format!("library {}", self.location)))?
            .init(
                &Credentials::password(&self.password),
                &KeyOptions::default(),
                &Self::config_options(),
            );
        match made {
            Ok(_) => Ok(Made::Created),
            // rustic_core itself refuses when a config appeared after our look.
            Err(_) if be.lost_creation() || self.exists()? => Ok(Made::Lost),
            Err(e) => Err(rustic(format!("library {}: creating it", self.location))(e)),
        }
    }

    /// Whether the library has a key file.
    fn has_key(&self) -> Result<bool> {
        let keys = format!("{}keys/", self.location.prefix);
        let listing = self
            .handle()
            .block_on(self.store.list(&keys))
            .with_context(|| format!("library {}: listing its keys", self.location))?;
        Ok(!listing.objects.is_empty())
    }

    /// Repository settings of a new library: data packs stay under 48 MiB (a pack
    /// ends after the blob that reaches its target size, and a blob is at most 8 MiB),
    /// so every pack fits in one object of the embedded store (64 MiB).
    fn config_options() -> ConfigOptions {
        let mut opts = ConfigOptions::default();
        opts.set_datapack_size_limit = Some(bytesize::ByteSize::mib(40));
        opts
    }

    /// Opens the repository, reporting progress to `pb`.
    pub(crate) fn open_with<P: ProgressBars>(&self, pb: P) -> Result<Repository<OpenStatus>> {
        if !self.exists()? {
            bail!(
                "library {}: there is no library there; check the location, or create one (capture --init)",
                self.location
            );
        }
        Repository::new_with_progress(&Self::options(), &self.backends(), pb)
            .map_err(rustic(format!("library {}", self.location)))?
            .open(&Credentials::password(&self.password))
            .map_err(|e| {
                if e.is_incorrect_password() {
                    anyhow!(
                        "library {}: the password does not open it; check the password file",
                        self.location
                    )
                } else {
                    rustic(format!("library {}", self.location))(e)
                }
            })
    }

    /// Opens the repository without progress reports.
    pub fn open(&self) -> Result<Repository<OpenStatus>> {
        self.open_with(NoProgressBars)
    }

    /// The manifest snapshots of `image` (every image when `None`), oldest first.
    pub(crate) fn manifest_snapshots<S: Open>(
        repo: &Repository<S>,
        image: Option<&str>,
    ) -> Result<Vec<SnapshotFile>> {
        let all = repo
            .get_all_snapshots()
            .map_err(rustic("reading the library's snapshots"))?;
        Ok(Self::manifests_in(&all, image)
            .into_iter()
            .cloned()
            .collect())
    }

    /// The manifest snapshots among `all` (of `image`, or of every image), oldest
    /// first.
    pub(crate) fn manifests_in<'a>(
        all: &'a [SnapshotFile],
        image: Option<&str>,
    ) -> Vec<&'a SnapshotFile> {
        let mut snaps: Vec<&SnapshotFile> = all
            .iter()
            .filter(|s| s.tags.contains(TAG_MANIFEST))
            .filter(|s| image.is_none_or(|i| s.tags.contains(&format!("{TAG_IMAGE}{i}"))))
            .collect();
        snaps.sort_by(|a, b| a.time.cmp(&b.time));
        snaps
    }

    /// The manifest (without survey) a manifest snapshot carries in its description.
    pub(crate) fn summary_of(snap: &SnapshotFile) -> Result<Manifest> {
        let text = snap.description.as_deref().unwrap_or("");
        serde_json::from_str(text)
            .with_context(|| format!("snapshot {}: its manifest summary does not parse", snap.id))
    }

    /// Every complete image, by name.
    pub fn images(&self) -> Result<Vec<ImageSummary>> {
        let repo = self.open()?;
        let mut out: Vec<ImageSummary> = Vec::new();
        for snap in Self::manifest_snapshots(&repo, None)? {
            let m = Self::summary_of(&snap)?;
            let point = (m.capture.clone(), m.finished.clone());
            match out.iter_mut().find(|i| i.name == m.image) {
                Some(i) => {
                    i.captures.push(point);
                    i.latest = m;
                }
                None => out.push(ImageSummary {
                    name: m.image.clone(),
                    captures: vec![point],
                    latest: m,
                }),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The full manifest of `image`'s latest capture, or of capture `at`.
    pub fn manifest(&self, image: &str, at: Option<&str>) -> Result<Manifest> {
        let repo = self.open()?;
        let snap = self.manifest_snapshot(&repo, image, at)?;
        Self::full_manifest_indexing(repo, &snap, image)
    }

    /// The full manifest of capture `at` of `image` as far as it is written, waiting
    /// up to `wait` for the capture to write its first partial manifest: the complete
    /// manifest, or a partial one (with its survey and [`Manifest::pending`]). Fails
    /// when the capture stopped, saying why.
    pub fn manifest_following(&self, image: &str, at: &str, wait: Duration) -> Result<Manifest> {
        let repo = self.open()?;
        let (snap, _) = self.follow(&repo, image, at, None, wait)?;
        Self::full_manifest_indexing(repo, &snap, image)
    }

    /// [`Library::manifest_following`] without waiting: `None` before the capture
    /// wrote any manifest.
    pub fn manifest_so_far(&self, image: &str, at: &str) -> Result<Option<Manifest>> {
        check_image_name(image).map_err(|e| anyhow!(e))?;
        let repo = self.open()?;
        let Some((snap, m)) = Self::written_so_far(&repo, image, at)? else {
            return Ok(None);
        };
        Self::check_not_abandoned(&m, image, at)?;
        Self::full_manifest_indexing(repo, &snap, image).map(Some)
    }

    /// The full manifest in `snap`, the index read first.
    fn full_manifest_indexing(
        repo: Repository<OpenStatus>,
        snap: &SnapshotFile,
        image: &str,
    ) -> Result<Manifest> {
        let repo = repo
            .to_indexed()
            .map_err(rustic("reading the library's index"))?;
        Self::full_manifest(&repo, snap, image)
    }

    /// A capture that stopped is no layout to deploy.
    fn check_not_abandoned(m: &Manifest, image: &str, at: &str) -> Result<()> {
        match &m.abandoned {
            Some(why) => bail!("image {image}: capture {at} stopped: {why}"),
            None => Ok(()),
        }
    }

    fn full_manifest<S: rustic_core::IndexedFull>(
        repo: &Repository<S>,
        snap: &SnapshotFile,
        image: &str,
    ) -> Result<Manifest> {
        let node = repo
            .node_from_snapshot_and_path(snap, MANIFEST_PATH)
            .map_err(rustic(format!("image {image}: its manifest")))?;
        let mut bytes = Vec::new();
        repo.dump(&node, &mut bytes)
            .map_err(rustic(format!("image {image}: reading its manifest")))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("image {image}: its manifest does not parse"))
    }

    /// Checks the library's structure and, with `read_data`, reads back and verifies
    /// every pack that `image`'s captures (all images when `None`) use.
    pub fn check(&self, image: Option<&str>, read_data: bool) -> Result<CheckReport> {
        let repo = self.open()?;
        let snaps: Vec<SnapshotFile> = repo
            .get_all_snapshots()
            .map_err(rustic("reading the library's snapshots"))?
            .into_iter()
            .filter(|s| image.is_none_or(|i| s.tags.contains(&format!("{TAG_IMAGE}{i}"))))
            .collect();
        if let Some(i) = image
            && snaps.is_empty()
        {
            bail!("image {i}: not in library {}", self.location);
        }
        let trees = snaps.iter().map(|s| s.tree).collect();
        let results = repo
            .check_with_trees(CheckOptions::default().read_data(read_data), trees)
            .map_err(rustic(format!("checking library {}", self.location)))?;
        let mut report = CheckReport {
            snapshots: snaps.len(),
            ..Default::default()
        };
        for (level, finding) in results.0 {
            let text = brief_text(&finding.to_string());
            if format!("{level:?}") == "Error" {
                report.errors.push(text);
            } else {
                report.warnings.push(text);
            }
        }
        Ok(report)
    }

    /// Removes `image` (or only its capture `at`) and the data no other image uses.
    pub fn remove(&self, image: &str, at: Option<&str>) -> Result<usize> {
        check_image_name(image).map_err(|e| anyhow!(e))?;
        let repo = self.open()?;
        let tag = match at {
            Some(at) => format!("{TAG_CAPTURE}{at}"),
            None => format!("{TAG_IMAGE}{image}"),
        };
        let ids: Vec<_> = repo
            .get_all_snapshots()
            .map_err(rustic("reading the library's snapshots"))?
            .into_iter()
            .filter(|s| s.tags.contains(&format!("{TAG_IMAGE}{image}")) && s.tags.contains(&tag))
            .map(|s| s.id)
            .collect();
        if ids.is_empty() {
            bail!(
                "image {image}: nothing to remove in library {}",
                self.location
            );
        }
        repo.delete_snapshots(&ids)
            .map_err(rustic(format!("image {image}: removing its snapshots")))?;
        let opts = PruneOptions::default();
        let plan = repo
            .prune_plan(&opts)
            .map_err(rustic("planning the removal of unused data"))?;
        repo.prune(&opts, plan)
            .map_err(rustic("removing unused data"))?;
        Ok(ids.len())
    }

    /// Deletes every object under the library's folder, config and keys last (so an
    /// interrupted discard is run again, not mistaken for no library); (objects,
    /// bytes). For a direct migration's temporary repository, whose folder holds
    /// nothing else.
    pub fn discard(&self) -> Result<(u64, u64)> {
        let store = self.store.clone();
        let top = self.location.prefix.clone();
        let what = format!("discarding {}", self.location);
        self.handle().block_on(async move {
            let (mut objects, mut bytes) = (0, 0);
            let mut folders = vec![top.clone()];
            let mut last = Vec::new();
            while let Some(folder) = folders.pop() {
                let listing = store
                    .list(&folder)
                    .await
                    .with_context(|| format!("{what}: listing {folder}"))?;
                folders.extend(listing.folders.iter().map(|f| format!("{folder}{f}/")));
                for (name, size) in listing.objects.iter().zip(&listing.sizes) {
                    let key = format!("{folder}{name}");
                    if folder == top || folder == format!("{top}keys/") {
                        last.push(key);
                    } else {
                        store
                            .delete(&key)
                            .await
                            .with_context(|| format!("{what}: deleting {key}"))?;
                    }
                    objects += 1;
                    bytes += size;
                }
            }
            for key in last.iter().rev() {
                store
                    .delete(key)
                    .await
                    .with_context(|| format!("{what}: deleting {key}"))?;
            }
            Ok((objects, bytes))
        })
    }

    /// Capture `at` of `image` as far as it is written: its manifest snapshot, else
    /// its furthest partial one (an abandoning one first), with the manifest summary;
    /// `None` before the capture wrote either.
    pub(crate) fn written_so_far<S: Open>(
        repo: &Repository<S>,
        image: &str,
        at: &str,
    ) -> Result<Option<(SnapshotFile, Manifest)>> {
        let (of_image, of_capture) = (format!("{TAG_IMAGE}{image}"), format!("{TAG_CAPTURE}{at}"));
        let mut best: Option<((bool, bool, usize), SnapshotFile, Manifest)> = None;
        for snap in repo
            .get_all_snapshots()
            .map_err(rustic("reading the library's snapshots"))?
        {
            let complete = snap.tags.contains(TAG_MANIFEST);
            if !(snap.tags.contains(&of_image) && snap.tags.contains(&of_capture))
                || !(complete || snap.tags.contains(TAG_PARTIAL))
            {
                continue;
            }
            let m = Self::summary_of(&snap)?;
            let rank = (complete, m.abandoned.is_some(), m.filesystems.len());
            if best.as_ref().is_none_or(|(r, ..)| rank > *r) {
                best = Some((rank, snap, m));
            }
        }
        Ok(best.map(|(_, snap, m)| (snap, m)))
    }

    /// Waits up to `wait` for capture `at` of `image` to have written filesystem `fs`
    /// (anything, when `None`); returns what it has written then. Fails at once when
    /// the capture stopped, or is complete or says it has no such filesystem.
    pub(crate) fn follow<S: Open>(
        &self,
        repo: &Repository<S>,
        image: &str,
        at: &str,
        fs: Option<&str>,
        wait: Duration,
    ) -> Result<(SnapshotFile, Manifest)> {
        check_image_name(image).map_err(|e| anyhow!(e))?;
        let start = Instant::now();
        let what = match fs {
            Some(fs) => format!("image {image}: capture {at}: filesystem {fs}"),
            None => format!("image {image}: capture {at}"),
        };
        loop {
            if let Some((snap, m)) = Self::written_so_far(repo, image, at)? {
                let Some(fs) = fs else {
                    Self::check_not_abandoned(&m, image, at)?;
                    return Ok((snap, m));
                };
                if m.filesystem(fs).is_some() {
                    return Ok((snap, m));
                }
                let known = !(m.filesystems.is_empty() && m.pending.is_empty());
                if known && !m.pending.iter().any(|p| p.path == fs) {
                    let have: Vec<&str> = m
                        .filesystems
                        .iter()
                        .map(|f| f.path.as_str())
                        .chain(m.pending.iter().map(|p| p.path.as_str()))
                        .collect();
                    bail!(
                        "{what}: the capture has no such filesystem; it has {}",
                        have.join(", ")
                    );
                }
                if let Some(why) = &m.abandoned {
                    bail!("{what}: the capture stopped before writing it: {why}");
                }
            }
            if start.elapsed() >= wait {
                bail!(
                    "{what}: not written after {} s in library {}; is the capture running?",
                    wait.as_secs(),
                    self.location
                );
            }
            std::thread::sleep(FOLLOW_POLL.min(wait.saturating_sub(start.elapsed())));
        }
    }

    /// The manifest snapshot of `image` (latest, or capture `at`).
    pub(crate) fn manifest_snapshot<S: Open>(
        &self,
        repo: &Repository<S>,
        image: &str,
        at: Option<&str>,
    ) -> Result<SnapshotFile> {
        check_image_name(image).map_err(|e| anyhow!(e))?;
        let snaps = Self::manifest_snapshots(repo, Some(image))?;
        let found = match at {
            None => snaps.into_iter().next_back(),
            Some(at) => snaps
                .into_iter()
                .find(|s| s.tags.contains(&format!("{TAG_CAPTURE}{at}"))),
        };
        found.ok_or_else(|| match at {
            None => anyhow!(
                "image {image}: not in library {}; `ferry images` lists what is there",
                self.location
            ),
            Some(at) => anyhow!("image {image}: has no capture {at}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let l = Location::parse_url("/srv/lib/").unwrap();
        assert_eq!(
            (l.store.url.as_str(), l.prefix.as_str()),
            ("file:///srv/lib", "")
        );
        let l = Location::parse_url("s3://127.0.0.1:9000/bucket/images/ferry").unwrap();
        assert_eq!(
            (l.store.url.as_str(), l.prefix.as_str()),
            ("s3+https://127.0.0.1:9000/bucket", "images/ferry/")
        );
        let l = Location::parse_url("s3+http://h:1/b").unwrap();
        assert_eq!(
            (l.store.url.as_str(), l.prefix.as_str()),
            ("s3+http://h:1/b", "")
        );
        let l = Location::parse_url("webdav://h:8443/dav/lib").unwrap();
        assert_eq!(l.store.url, "dav+https://h:8443/dav/lib/");
        assert_eq!(l.to_string(), "dav+https://h:8443/dav/lib");
        for bad in ["s3://host", "webdav:///x", "ftp://x", "relative/dir"] {
            assert!(Location::parse_url(bad).is_err(), "{bad}");
        }
    }
}
