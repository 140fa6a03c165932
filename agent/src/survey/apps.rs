//! Applications: services started at boot, installed packages (the dpkg and rpm
//! databases read directly), listening sockets with their process and service (/proc), and the
//! configurations of known servers with the addresses they bind.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ferry_model::survey::{AppConfig, Apps, Listener, Package};

use super::{Gaps, Host, rpmdb};

/// Services, packages, listeners and application configs of `host`.
pub fn apps(host: &Host, gaps: &mut Gaps) -> Apps {
    let mut a = Apps {
        services: services(host),
        ..Default::default()
    };
    if host.exists("/var/lib/dpkg/status") {
        match host.read_raw("/var/lib/dpkg/status") {
            Ok(text) => {
                a.packages = dpkg_status(&text);
                a.package_manager = Some("dpkg".into());
            }
            Err(e) => gaps.note("packages", format!("/var/lib/dpkg/status: {e}")),
        }
    } else if let Some(dir) = ["/usr/lib/sysimage/rpm", "/var/lib/rpm"]
        .into_iter()
        .find(|d| host.exists(d))
    {
        a.package_manager = Some("rpm".into());
        match rpmdb::packages(host, dir) {
            Ok(p) => a.packages = p,
            Err(e) => gaps.note("packages", e),
        }
    }
    let owners = socket_owners(host);
    for (file, proto) in [
        ("/proc/net/tcp", "tcp"),
        ("/proc/net/tcp6", "tcp6"),
        ("/proc/net/udp", "udp"),
        ("/proc/net/udp6", "udp6"),
    ] {
        match host.read_raw(file) {
            Ok(text) => a.listening.extend(listeners(&text, proto, &owners)),
            Err(e) if proto.ends_with('6') && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => gaps.note("listening sockets", format!("{file}: {e}")),
        }
    }
    a.configs = app_configs(host);
    a
}

/// Services enabled at boot: systemd `*.wants` links, else SysV `rc2.d`/`rc3.d` starts.
pub fn services(host: &Host) -> Vec<String> {
    let mut out: Vec<String> = host
        .list("/etc/systemd/system")
        .into_iter()
        .filter(|d| d.ends_with(".wants"))
        .flat_map(|d| host.list(&format!("/etc/systemd/system/{d}")))
        .filter(|u| u.ends_with(".service") || u.ends_with(".socket") || u.ends_with(".timer"))
        .collect();
    if out.is_empty() {
        for rc in ["/etc/rc2.d", "/etc/rc3.d"] {
            out.extend(host.list(rc).into_iter().filter_map(|f| {
                f.strip_prefix('S').map(|s| {
                    s.trim_start_matches(|c: char| c.is_ascii_digit())
                        .to_string()
                })
            }));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Installed packages from a dpkg `status` file.
pub fn dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in stanza.lines() {
            if line.starts_with(' ') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim());
            }
        }
        let installed = fields
            .get("Status")
            .is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(name)) = (installed, fields.get("Package")) {
            out.push(Package {
                name: name.to_string(),
                version: fields.get("Version").unwrap_or(&"").to_string(),
                arch: fields.get("Architecture").unwrap_or(&"").to_string(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Who owns each socket inode: (pid, process name, systemd unit).
type Owners = HashMap<u64, (u32, String, Option<String>)>;

/// Socket inodes of every process, from `/proc/<pid>/fd`.
fn socket_owners(host: &Host) -> Owners {
    let mut out = Owners::new();
    for pid in host
        .list("/proc")
        .into_iter()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        let fds = host.list(&format!("/proc/{pid}/fd"));
        let mut comm = None;
        for fd in fds {
            let Some(target) = host.link(&format!("/proc/{pid}/fd/{fd}")) else {
                continue;
            };
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let (name, unit) = comm.get_or_insert_with(|| {
                (
                    host.read(&format!("/proc/{pid}/comm")).unwrap_or_default(),
                    host.read_raw(&format!("/proc/{pid}/cgroup"))
                        .ok()
                        .and_then(|c| unit_of(&c)),
                )
            });
            out.entry(inode)
                .or_insert((pid, name.clone(), unit.clone()));
        }
    }
    out
}

/// The systemd unit in a `/proc/<pid>/cgroup` file.
pub fn unit_of(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|l| {
        let path = l.rsplit(':').next()?;
        path.split('/')
            .rev()
            .find(|c| c.ends_with(".service"))
            .map(str::to_string)
    })
}

/// Decodes a /proc/net address (`0100007F:1F90`).
fn socket_address(hex: &str) -> Option<(String, u16)> {
    let (addr, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.swap_bytes()).to_string(),
        32 => {
            // Four 32-bit words, each in host (little-endian) order.
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let w = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&w.swap_bytes().to_be_bytes());
            }
            Ipv6Addr::from(bytes).to_string()
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Listening TCP sockets (state `0A`) and bound UDP sockets (state `07`, no peer).
pub fn listeners(text: &str, proto: &str, owners: &Owners) -> Vec<Listener> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state, inode) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(9)?);
            let listening = if proto.starts_with("tcp") {
                *state == "0A"
            } else {
                *state == "07" && remote.ends_with(":0000")
            };
            if !listening {
                return None;
            }
            let (address, port) = socket_address(local)?;
            let owner = inode.parse::<u64>().ok().and_then(|i| owners.get(&i));
            Some(Listener {
                proto: proto.to_string(),
                address,
                port,
                pid: owner.map(|o| o.0),
                process: owner.map(|o| o.1.clone()),
                service: owner.and_then(|o| o.2.clone()),
            })
        })
        .collect()
}

/// Config files of known applications with the addresses they bind and connect to.
pub fn app_configs(host: &Host) -> Vec<AppConfig> {
    let mut out = Vec::new();
    let files = |dirs: &[&str]| -> Vec<String> {
        let mut v = Vec::new();
        for d in dirs {
            if d.ends_with('/') {
                v.extend(host.list(d).into_iter().map(|f| format!("{d}{f}")));
            } else if host.exists(d) {
                v.push(d.to_string());
            }
        }
        v.retain(|f| host.path(f).is_file());
        v
    };
    let mut scan =
        |app: &str, paths: Vec<String>, parse: fn(&str) -> (Vec<String>, Vec<String>)| {
            if paths.is_empty() {
                return;
            }
            let (mut binds, mut connects) = (Vec::new(), Vec::new());
            for p in &paths {
                if let Ok(text) = host.read_raw(p) {
                    let (b, c) = parse(&text);
                    binds.extend(b);
                    connects.extend(c);
                }
            }
            binds.sort();
            binds.dedup();
            connects.sort();
            connects.dedup();
            out.push(AppConfig {
                app: app.into(),
                files: paths,
                binds,
                connects,
            });
        };
    scan(
        "nginx",
        files(&[
            "/etc/nginx/nginx.conf",
            "/etc/nginx/sites-enabled/",
            "/etc/nginx/conf.d/",
        ]),
        nginx,
    );
    scan(
        "apache",
        files(&[
            "/etc/apache2/ports.conf",
            "/etc/apache2/sites-enabled/",
            "/etc/httpd/conf/httpd.conf",
            "/etc/httpd/conf.d/",
        ]),
        apache,
    );
    scan(
        "mysql",
        files(&[
            "/etc/mysql/my.cnf",
            "/etc/mysql/mariadb.conf.d/",
            "/etc/mysql/mysql.conf.d/",
            "/etc/my.cnf",
        ]),
        mysql,
    );
    let pg: Vec<String> = host
        .list("/etc/postgresql")
        .into_iter()
        .map(|v| format!("/etc/postgresql/{v}/main/postgresql.conf"))
        .chain(["/var/lib/pgsql/data/postgresql.conf".to_string()])
        .filter(|p| host.path(p).is_file())
        .collect();
    scan("postgresql", pg, postgresql);
    scan(
        "redis",
        files(&["/etc/redis/redis.conf", "/etc/redis.conf"]),
        redis,
    );
    out
}

/// Lines without comments, trimmed.
fn lines(text: &str, comment: char) -> impl Iterator<Item = &str> {
    text.lines()
        .map(move |l| l.split(comment).next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
}

/// nginx: `listen` binds; `proxy_pass`, `fastcgi_pass`, `uwsgi_pass` and upstream
/// `server` lines connect.
pub fn nginx(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut b, mut c) = (Vec::new(), Vec::new());
    let clean: Vec<&str> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect();
    let clean = clean.join("\n");
    // Statements end at `;`, blocks open at `{` and close at `}`.
    let (mut depth, mut upstream): (usize, Option<usize>) = (0, None);
    let mut stmt = String::new();
    for ch in clean.chars() {
        if !matches!(ch, ';' | '{' | '}') {
            stmt.push(ch);
            continue;
        }
        let words: Vec<&str> = stmt.split_whitespace().collect();
        match (ch, words.first().copied()) {
            ('{', first) => {
                depth += 1;
                if first == Some("upstream") {
                    upstream = Some(depth);
                }
            }
            ('}', _) => {
                if upstream == Some(depth) {
                    upstream = None;
                }
                depth = depth.saturating_sub(1);
            }
            (_, Some("listen")) => b.extend(words.get(1).map(|s| s.to_string())),
            (_, Some("proxy_pass" | "fastcgi_pass" | "uwsgi_pass" | "grpc_pass")) => {
                c.extend(words.get(1).map(|s| s.to_string()))
            }
            (_, Some("server")) if upstream.is_some() => {
                c.extend(words.get(1).map(|s| s.to_string()))
            }
            _ => {}
        }
        stmt.clear();
    }
    (b, c)
}

/// Apache: `Listen` binds; `ProxyPass` targets connect.
pub fn apache(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut b, mut c) = (Vec::new(), Vec::new());
    for l in lines(text, '#') {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.first().map(|k| k.to_ascii_lowercase()).as_deref() {
            Some("listen") => b.extend(f.get(1).map(|s| s.to_string())),
            Some("proxypass") => c.extend(f.get(2).map(|s| s.to_string())),
            _ => {}
        }
    }
    (b, c)
}

fn ini_values<'a>(text: &'a str, keys: &[&str]) -> Vec<(String, &'a str)> {
    lines(text, '#')
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().replace('_', "-").to_ascii_lowercase(),
                v.trim().trim_matches(['\'', '"']),
            )
        })
        .filter(|(k, _)| keys.contains(&k.as_str()))
        .collect()
}

/// Database servers: a comma list of addresses under `addr_key`, and `port`.
fn db_binds(
    text: &str,
    addr_key: &str,
    default_addrs: &str,
    default_port: &str,
) -> (Vec<String>, Vec<String>) {
    let v = ini_values(text, &[addr_key, "port"]);
    let value = |k: &str| v.iter().find(|(key, _)| key == k).map(|(_, x)| *x);
    let port = value("port").unwrap_or(default_port);
    let binds = value(addr_key)
        .unwrap_or(default_addrs)
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| format!("{a}:{port}"))
        .collect();
    (binds, Vec::new())
}

/// MySQL/MariaDB: `bind-address` and `port`.
pub fn mysql(text: &str) -> (Vec<String>, Vec<String>) {
    db_binds(text, "bind-address", "", "3306")
}

/// PostgreSQL: `listen_addresses` and `port`.
pub fn postgresql(text: &str) -> (Vec<String>, Vec<String>) {
    db_binds(text, "listen-addresses", "localhost", "5432")
}

/// Redis: `bind` and `port`; `replicaof` connects.
pub fn redis(text: &str) -> (Vec<String>, Vec<String>) {
    let (mut addrs, mut port, mut c) = (Vec::new(), "6379".to_string(), Vec::new());
    for l in lines(text, '#') {
        let f: Vec<&str> = l.split_whitespace().collect();
        match f.first().copied() {
            Some("bind") => addrs.extend(f[1..].iter().map(|s| s.to_string())),
            Some("port") => port = f.get(1).unwrap_or(&"6379").to_string(),
            Some("replicaof" | "slaveof") if f.len() >= 3 => c.push(format!("{}:{}", f[1], f[2])),
            _ => {}
        }
    }
    (addrs.iter().map(|a| format!("{a}:{port}")).collect(), c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::{fixture, host, put};

    #[test]
    fn packages_from_the_dpkg_database() {
        let p = dpkg_status(&fixture("dpkg-status.txt"));
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["apache2", "bash", "libc6", "zstd"]);
        assert!(
            p.iter()
                .all(|p| !p.version.is_empty() && p.arch == "amd64" || p.arch == "all"),
            "{p:?}"
        );
        let removed = "Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\nPackage: kept\nStatus: install ok installed\nVersion: 2\nArchitecture: all\n";
        assert_eq!(dpkg_status(removed).len(), 1);
    }

    #[test]
    fn listening_sockets_from_proc_net() {
        let owners: Owners = [(
            210612,
            (4242, "python3".to_string(), Some("web.service".to_string())),
        )]
        .into();
        let l = listeners(&fixture("proc-net-tcp.txt"), "tcp", &owners);
        let web = l.iter().find(|x| x.port == 18080).expect("18080 listens");
        assert_eq!(web.address, "127.0.0.1");
        assert_eq!(
            (web.pid, web.service.as_deref()),
            (Some(4242), Some("web.service"))
        );
        assert!(l.iter().any(|x| x.port == 2024 && x.address == "0.0.0.0"));
        let l6 = listeners(&fixture("proc-net-tcp6.txt"), "tcp6", &Owners::new());
        assert!(
            l6.iter().any(|x| x.port == 18081 && x.address == "::"),
            "{l6:?}"
        );
        assert_eq!(
            unit_of("0::/system.slice/nginx.service\n"),
            Some("nginx.service".into())
        );
        assert_eq!(
            socket_address("0100007F:1F90"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(
            socket_address("B80D01200000000000000000010000000:0050").map(|x| x.1),
            None,
            "33 hex digits is not an address"
        );
    }

    #[test]
    fn a_live_listener_is_found_with_its_process() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        let mut gaps = Gaps::default();
        let a = apps(&crate::survey::Host::live(), &mut gaps);
        let me = a
            .listening
            .iter()
            .find(|l| l.port == port && l.proto == "tcp")
            .expect("our socket");
        assert_eq!(me.pid, Some(std::process::id()));
    }

    #[test]
    fn web_database_and_cache_configs() {
        let (b, _) = apache(&fixture("apache-ports.conf"));
        assert_eq!(b, ["80", "443", "443"]);
        let (b, c) = nginx(
            "server {\n  listen 192.0.2.10:80 default_server;\n  listen [::]:80;\n  location / { proxy_pass http://app; }\n}\nupstream app {\n  server 10.0.0.5:8080;\n}\n",
        );
        assert_eq!(b, ["192.0.2.10:80", "[::]:80"]);
        assert_eq!(c, ["http://app", "10.0.0.5:8080"]);
        assert_eq!(
            mysql("[mysqld]\nbind-address = 10.0.0.7\nport=3307\n").0,
            ["10.0.0.7:3307"]
        );
        assert_eq!(
            postgresql("listen_addresses = 'localhost,10.0.0.8'  # comma list\n").0,
            ["localhost:5432", "10.0.0.8:5432"]
        );
        let (b, c) = redis("bind 127.0.0.1 ::1\nport 6380\nreplicaof 10.0.0.9 6379\n");
        assert_eq!(b, ["127.0.0.1:6380", "::1:6380"]);
        assert_eq!(c, ["10.0.0.9:6379"]);

        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            "etc/apache2/ports.conf",
            &fixture("apache-ports.conf"),
        );
        put(
            dir.path(),
            "etc/apache2/sites-enabled/000-default.conf",
            "<VirtualHost *:80>\nProxyPass /api http://10.0.0.2:9000/\n</VirtualHost>\n",
        );
        let cfg = app_configs(&host(dir.path(), &[]));
        assert_eq!(cfg.len(), 1);
        assert_eq!(cfg[0].files.len(), 2);
        assert_eq!(cfg[0].binds, ["443", "80"]);
        assert_eq!(cfg[0].connects, ["http://10.0.0.2:9000/"]);
    }

    #[test]
    fn an_unreadable_package_database_is_a_gap_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the status file should be: it exists but cannot be read.
        std::fs::create_dir_all(dir.path().join("var/lib/dpkg/status")).unwrap();
        let mut gaps = Gaps::default();
        let a = apps(&host(dir.path(), &[]), &mut gaps);
        assert!(a.packages.is_empty());
        assert!(
            gaps.0
                .iter()
                .any(|g| g.what == "packages" && g.why.contains("/var/lib/dpkg/status")),
            "{:?}",
            gaps.0
        );
    }
}
