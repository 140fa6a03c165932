//! The operating system: distribution, init, boot loader, accounts and directory
//! membership.

use ferry_model::survey::{Auth, BootLoader, Distro, Os};

use super::{Gaps, Host};

/// Distribution, kernel command line, init, boot loader and authentication. Storage
/// and network are filled by their own modules.
pub fn os(host: &Host, gaps: &mut Gaps) -> Os {
    let distro = match host
        .read_raw("/etc/os-release")
        .or_else(|_| host.read_raw("/usr/lib/os-release"))
    {
        Ok(text) => distro(&text),
        Err(e) => {
            gaps.note("distribution", format!("/etc/os-release: {e}"));
            Distro::default()
        }
    };
    Os {
        distro,
        cmdline: host.read("/proc/cmdline").unwrap_or_default(),
        init: init(host),
        boot_loader: boot_loader(host),
        auth: auth(host, gaps),
        ..Default::default()
    }
}

/// Unquotes an os-release value.
fn unquote(v: &str) -> String {
    let v = v.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v);
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

/// Parses os-release.
pub fn distro(text: &str) -> Distro {
    let mut d = Distro::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = unquote(v);
        match k.trim() {
            "ID" => d.id = v,
            "ID_LIKE" => d.like = v.split_whitespace().map(str::to_string).collect(),
            "VERSION_ID" => d.version_id = v,
            "PRETTY_NAME" => d.pretty_name = v,
            _ => {}
        }
    }
    d
}

/// What PID 1 is.
fn init(host: &Host) -> String {
    if host.exists("/etc/ferry/ramdisk.json") {
        return "ferry".into();
    }
    if host.exists("/run/systemd/system") {
        return "systemd".into();
    }
    if host.exists("/run/openrc") {
        return "openrc".into();
    }
    match host.link_name("/proc/1/exe").as_deref() {
        Some("systemd") => "systemd".into(),
        Some("upstart") => "upstart".into(),
        Some("init") if host.exists("/etc/inittab") => "sysvinit".into(),
        Some(other) => other.to_string(),
        None => host.read("/proc/1/comm").unwrap_or_default(),
    }
}

/// The boot loader whose configuration is present, and the UEFI entry used.
fn boot_loader(host: &Host) -> Option<BootLoader> {
    let candidates = [
        ("grub", "/boot/grub/grub.cfg"),
        ("grub2", "/boot/grub2/grub.cfg"),
        ("systemd-boot", "/boot/efi/loader/loader.conf"),
        ("systemd-boot", "/efi/loader/loader.conf"),
        ("systemd-boot", "/boot/loader/loader.conf"),
        ("extlinux", "/boot/extlinux/extlinux.conf"),
        ("syslinux", "/boot/syslinux/syslinux.cfg"),
    ];
    let found: Vec<(&str, &str)> = candidates
        .into_iter()
        .filter(|(_, p)| host.exists(p))
        .collect();
    let efi_current = efi_boot_current(host);
    let (kind, _) = found.first()?;
    let mut config: Vec<String> = found
        .iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, p)| p.to_string())
        .collect();
    if kind.starts_with("grub") && host.exists("/etc/default/grub") {
        config.push("/etc/default/grub".into());
    }
    Some(BootLoader {
        kind: kind.to_string(),
        config,
        efi_current,
    })
}

/// `BootCurrent` (4 attribute bytes, then a little-endian u16).
fn efi_boot_current(host: &Host) -> Option<String> {
    const VAR: &str = "/sys/firmware/efi/efivars/BootCurrent-8be4df61-93ca-11d2-aa0d-00e098032b8c";
    let b = std::fs::read(host.path(VAR)).ok()?;
    let n = u16::from_le_bytes([*b.get(4)?, *b.get(5)?]);
    Some(format!("Boot{n:04X}"))
}

/// Local accounts and directory membership.
fn auth(host: &Host, gaps: &mut Gaps) -> Auth {
    let mut a = Auth::default();
    match host.read_raw("/etc/passwd") {
        Ok(text) => a.local_users = local_users(&text),
        Err(e) => gaps.note("local accounts", format!("/etc/passwd: {e}")),
    }
    let nsswitch = host.read_raw("/etc/nsswitch.conf").unwrap_or_default();
    let sources = nss_sources(&nsswitch, "passwd");
    if host.exists("/etc/sssd/sssd.conf") || sources.iter().any(|s| s == "sss") {
        a.sssd = true;
        a.evidence
            .push("sssd: /etc/sssd/sssd.conf or nsswitch passwd: sss".into());
    }
    let sssd = host.read_raw("/etc/sssd/sssd.conf").unwrap_or_default();
    if sources.iter().any(|s| s == "ldap")
        || host.exists("/etc/nslcd.conf")
        || ini_has(&sssd, "id_provider", "ldap")
    {
        a.ldap = true;
        a.evidence
            .push("ldap: nsswitch, nslcd or sssd id_provider".into());
    }
    let krb5 = host.read_raw("/etc/krb5.conf").unwrap_or_default();
    if krb5
        .lines()
        .any(|l| l.trim_start().starts_with("default_realm"))
    {
        a.kerberos = true;
        a.evidence
            .push("kerberos: default_realm in /etc/krb5.conf".into());
    }
    let smb = host.read_raw("/etc/samba/smb.conf").unwrap_or_default();
    if ini_has(&sssd, "id_provider", "ad") || ini_has(&smb, "security", "ads") {
        a.active_directory = true;
        a.evidence
            .push("active directory: sssd id_provider = ad or samba security = ads".into());
    }
    a
}

/// Root plus accounts with a login UID range.
pub fn local_users(passwd: &str) -> u32 {
    passwd
        .lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .filter(|uid| *uid == 0 || (1000..65534).contains(uid))
        .count() as u32
}

/// The sources of one nsswitch database.
pub fn nss_sources(text: &str, db: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == db)
        .flat_map(|(_, v)| {
            v.split_whitespace()
                .filter(|s| !s.starts_with('['))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether an ini-style file sets `key = value` anywhere (case-insensitive).
fn ini_has(text: &str, key: &str, value: &str) -> bool {
    text.lines().any(|l| {
        l.split_once('=').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case(key) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::survey::testing::{fixture, host, put};

    #[test]
    fn reads_os_release() {
        let d = distro(&fixture("os-release-debian12.txt"));
        assert_eq!(d.id, "debian");
        assert_eq!(d.version_id, "12");
        assert_eq!(d.pretty_name, "Debian GNU/Linux 12 (bookworm)");
        let d = distro("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\n");
        assert_eq!(d.like, ["rhel", "centos", "fedora"]);
        assert_eq!(d.version_id, "9.3");
    }

    #[test]
    fn finds_boot_loader_accounts_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "boot/grub/grub.cfg", "menuentry 'Debian' {}\n");
        put(r, "etc/default/grub", "GRUB_TIMEOUT=5\n");
        put(r, "etc/passwd", &fixture("passwd.txt"));
        put(
            r,
            "etc/nsswitch.conf",
            "passwd:         files sss [NOTFOUND=return] ldap\ngroup: files\n",
        );
        put(
            r,
            "etc/krb5.conf",
            "[libdefaults]\n  default_realm = EXAMPLE.COM\n",
        );
        put(
            r,
            "etc/sssd/sssd.conf",
            "[domain/example.com]\nid_provider = ad\n",
        );
        let mut gaps = Gaps::default();
        let os = os(&host(r, &[]), &mut gaps);
        let bl = os.boot_loader.unwrap();
        assert_eq!(bl.kind, "grub");
        assert_eq!(bl.config, ["/boot/grub/grub.cfg", "/etc/default/grub"]);
        assert!(os.auth.sssd && os.auth.ldap && os.auth.kerberos && os.auth.active_directory);
        assert_eq!(os.auth.local_users, local_users(&fixture("passwd.txt")));
        assert!(os.auth.local_users >= 1);
        // No os-release in this tree: named, not fatal.
        assert_eq!(gaps.0.len(), 1, "{:?}", gaps.0);
        assert_eq!(gaps.0[0].what, "distribution");
    }

    #[test]
    fn counts_root_and_login_accounts_only() {
        let passwd = "root:x:0:0::/root:/bin/bash\ndaemon:x:1:1::/:/usr/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\nnobody:x:65534:65534::/:/usr/sbin/nologin\n";
        assert_eq!(local_users(passwd), 2);
    }
}
