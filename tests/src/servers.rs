//! Real store servers on 127.0.0.1 for the suites: Ferry's embedded store (in-process,
//! stoppable), moto (an independent S3 server) and Apache 2 mod_dav over TLS.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use ferry_mailbox::StoreConfig;
use ferry_manager::config::{InitOptions, ManagerConfig};
use tokio::sync::oneshot;

use crate::procs::Proc;
use crate::util::{free_port, wait_port};

/// Ferry's embedded store, served from this process; can be stopped and started again.
pub struct Embedded {
    /// The manager config `ferry init` wrote (with the manager credential).
    pub config: ManagerConfig,
    /// Path of that config file.
    pub config_path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl Embedded {
    /// Initialises a manager data folder in `data` and starts its store.
    pub async fn start(data: &Path) -> Result<Embedded> {
        let listen = format!("127.0.0.1:{}", free_port()).parse()?;
        let config_path = ferry_manager::config::init(&InitOptions {
            data: data.to_path_buf(),
            listen,
            tls_names: vec![],
            store: None,
            agent_store_url: None,
            boot: None,
            agent_heartbeat_secs: None,
            agent_poll_secs: None,
        })?;
        let config = ManagerConfig::load(&config_path)?;
        let mut e = Embedded {
            config,
            config_path,
            stop: None,
            task: None,
        };
        e.resume().await?;
        Ok(e)
    }

    /// (Re)starts serving on the same address and folder.
    pub async fn resume(&mut self) -> Result<()> {
        let ec = self
            .config
            .embedded
            .clone()
            .context("config has no embedded store")?;
        let listener = ferry_manager::embedded::bind(&ec).await?;
        let (tx, rx) = oneshot::channel();
        self.task = Some(tokio::spawn(async move {
            ferry_manager::embedded::serve(&ec, listener, async {
                let _ = rx.await;
            })
            .await
        }));
        self.stop = Some(tx);
        Ok(())
    }

    /// Stops serving; connections already open end with it.
    pub async fn pause(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Store config with the manager credential.
    pub fn manager_store(&self) -> StoreConfig {
        self.config.store.clone()
    }

    /// Store config with the agent credential.
    pub fn agent_store(&self) -> StoreConfig {
        let e = self.config.embedded.as_ref().expect("embedded");
        StoreConfig {
            access_key: Some(e.agent.access_key.clone()),
            secret_key: Some(e.agent.secret_key.clone()),
            ..self.config.store.clone()
        }
    }
}

/// The `moto_server` program: `$FERRY_MOTO_SERVER`, or on PATH.
pub fn moto_program() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let out = Command::new("sh")
        .args(["-c", "command -v moto_server"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// moto's S3 server on 127.0.0.1 with one bucket.
pub struct Moto {
    /// Store config naming the bucket.
    pub store: StoreConfig,
    _proc: Proc,
}

impl Moto {
    /// Starts moto and creates bucket `ferry`.
    pub async fn start(program: &Path, log_dir: &Path) -> Result<Moto> {
        let port = free_port();
        let proc = Proc::spawn(
            "moto",
            Command::new(program).args(["-H", "127.0.0.1", "-p", &port.to_string()]),
            &log_dir.join("moto.log"),
        )?;
        wait_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).await?;
        // moto does not check signatures, so a plain PUT creates the bucket.
        let resp = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{port}/ferry"))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "moto refused CreateBucket: {}",
            resp.status()
        );
        Ok(Moto {
            store: StoreConfig {
                url: format!("s3+http://127.0.0.1:{port}/ferry"),
                access_key: Some("testing".into()),
                secret_key: Some("testing".into()),
                ..Default::default()
            },
            _proc: proc,
        })
    }
}

/// Apache 2 with mod_dav, mod_ssl and basic auth on 127.0.0.1, with a generated CA.
pub struct Apache {
    /// Store config with the CA pinned.
    pub store: StoreConfig,
    _proc: Proc,
}

impl Apache {
    /// Starts Apache serving `<dir>/htdocs/dav` over TLS.
    pub async fn start(dir: &Path) -> Result<Apache> {
        use std::os::unix::fs::PermissionsExt;
        let port = free_port();
        let tls = ferry_manager::tls::generate(&["localhost".into(), "127.0.0.1".into()])?;
        for sub in ["htdocs/dav", "lock", "run", "logs"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Apache's workers run as www-data: they must reach and write the DAV folders.
        let mut p = dir.to_path_buf();
        loop {
            let mode = std::fs::metadata(&p)?.permissions().mode();
            if mode & 0o005 != 0o005 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o755))?;
            }
            if !p.pop() || p.as_os_str() == "/" {
                break;
            }
        }
        for sub in ["htdocs/dav", "lock"] {
            Command::new("chown")
                .args(["-R", "www-data:www-data"])
                .arg(dir.join(sub))
                .status()?;
        }
        std::fs::write(dir.join("cert.pem"), &tls.cert_pem)?;
        std::fs::write(dir.join("key.pem"), &tls.key_pem)?;
        let hash = Command::new("openssl")
            .args(["passwd", "-apr1", "s3cret"])
            .output()
            .context("running openssl passwd")?;
        std::fs::write(
            dir.join("htpasswd"),
            format!("agent1:{}", String::from_utf8_lossy(&hash.stdout)),
        )?;
        let m = "/usr/lib/apache2/modules";
        let d = dir.display();
        let conf = format!(
            r#"ServerRoot {d}
ServerName localhost
PidFile {d}/run/httpd.pid
Mutex file:{d}/run
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authz_user_module {m}/mod_authz_user.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule authn_file_module {m}/mod_authn_file.so
LoadModule auth_basic_module {m}/mod_auth_basic.so
LoadModule mime_module {m}/mod_mime.so
LoadModule socache_shmcb_module {m}/mod_socache_shmcb.so
LoadModule ssl_module {m}/mod_ssl.so
LoadModule dav_module {m}/mod_dav.so
LoadModule dav_fs_module {m}/mod_dav_fs.so
User www-data
Group www-data
Listen 127.0.0.1:{port}
ErrorLog {d}/logs/error.log
TypesConfig /etc/mime.types
DocumentRoot {d}/htdocs
DavLockDB {d}/lock/DavLock
SSLSessionCache shmcb:{d}/run/ssl_scache(512000)
<VirtualHost 127.0.0.1:{port}>
  SSLEngine on
  SSLCertificateFile {d}/cert.pem
  SSLCertificateKeyFile {d}/key.pem
  <Directory {d}/htdocs/dav>
    Dav On
    AuthType Basic
    AuthName "mailbox"
    AuthUserFile {d}/htpasswd
    Require valid-user
  </Directory>
</VirtualHost>
"#
        );
        std::fs::write(dir.join("httpd.conf"), conf)?;
        let proc = Proc::spawn(
            "apache2",
            Command::new("apache2")
                .arg("-f")
                .arg(dir.join("httpd.conf"))
                .arg("-DFOREGROUND"),
            &dir.join("logs/console.log"),
        )?;
        wait_port(&format!("127.0.0.1:{port}"), Duration::from_secs(30))
            .await
            .with_context(|| {
                format!(
                    "apache did not start: {}",
                    std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
                )
            })?;
        Ok(Apache {
            store: StoreConfig {
                url: format!("dav+https://127.0.0.1:{port}/dav/"),
                access_key: Some("agent1".into()),
                secret_key: Some("s3cret".into()),
                ca_pem: Some(tls.ca_pem),
                region: None,
            },
            _proc: proc,
        })
    }
}
