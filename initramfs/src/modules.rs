//! A kernel's module tree as `depmod` describes it: `modules.dep` (hard dependencies),
//! `modules.softdep` (modules to load first), `modules.alias` (which module drives which
//! device or provides which name) and `modules.builtin`.
//!
//! Used at build time to pick a closed set of modules, and by the agent at boot to
//! match devices' modaliases the way udev and modprobe do. Plain std: it runs in the
//! static agent too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A module's canonical name: its file stem with `-` turned into `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))
        .unwrap_or(file);
    stem.replace('-', "_")
}

/// Everything `depmod` wrote about one kernel's modules.
#[derive(Debug, Default, Clone)]
pub struct ModuleIndex {
    /// Module name → path relative to the module folder (`kernel/...ko`).
    pub paths: BTreeMap<String, String>,
    /// Module name → names of the modules it needs.
    pub deps: HashMap<String, Vec<String>>,
    /// Module name → modules to load before it (already resolved through aliases).
    softdeps: HashMap<String, Vec<String>>,
    /// (pattern, module) from `modules.alias`, in file order.
    pub aliases: Vec<(String, String)>,
    /// Each alias pattern's literal prefix (up to its first wildcard), for a cheap
    /// rejection before the glob match: matching thousands of patterns against every
    /// device must stay fast on a slow (emulated) CPU.
    literal: Vec<usize>,
    /// Modules built into the kernel image.
    pub builtin: BTreeSet<String>,
}

/// A failure to read a module tree, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file depmod writes is missing or unreadable.
    #[error(
        "cannot read {path}: {source} (is this a kernel module folder such as /lib/modules/<release>? run `depmod` there if it has no modules.dep)"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line that is not in depmod's format.
    #[error("{path} line {line}: {text:?} is not in depmod's format")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

fn read(path: &Path, optional: bool) -> Result<String, IndexError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if optional && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(IndexError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl ModuleIndex {
    /// Reads `modules.dep` (required), `modules.alias`, `modules.softdep` and
    /// `modules.builtin` (optional) from a module folder.
    pub fn open(dir: &Path) -> Result<Self, IndexError> {
        let dep_path = dir.join("modules.dep");
        let dep = read(&dep_path, false)?;
        let alias = read(&dir.join("modules.alias"), true)?;
        let softdep = read(&dir.join("modules.softdep"), true)?;
        let builtin = read(&dir.join("modules.builtin"), true)?;
        Self::parse(&dep, &alias, &softdep, &builtin).map_err(|(file, line, text)| {
            IndexError::Syntax {
                path: dir.join(file),
                line,
                text,
            }
        })
    }

    /// Parses the four files' texts.
    pub fn parse(
        dep: &str,
        alias: &str,
        softdep: &str,
        builtin: &str,
    ) -> Result<Self, (&'static str, usize, String)> {
        let mut idx = ModuleIndex::default();
        for (n, line) in dep.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, rest)) = line.split_once(':') else {
                return Err(("modules.dep", n + 1, line.to_string()));
            };
            let name = module_name(path);
            let deps = rest.split_whitespace().map(module_name).collect();
            idx.paths.insert(name.clone(), path.trim().to_string());
            idx.deps.insert(name, deps);
        }
        for (n, line) in alias.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module)) => {
                    idx.literal
                        .push(pattern.find(['*', '?', '[']).unwrap_or(pattern.len()));
                    idx.aliases
                        .push((pattern.to_string(), module.replace('-', "_")));
                }
                _ => return Err(("modules.alias", n + 1, line.to_string())),
            }
        }
        idx.builtin = builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        for (n, line) in softdep.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                return Err(("modules.softdep", n + 1, line.to_string()));
            };
            let mut pre = Vec::new();
            let mut in_post = false;
            for w in words {
                match w {
                    "pre:" => in_post = false,
                    "post:" => in_post = true,
                    // Post-dependencies are wanted too; load order among them is loose.
                    name => pre.push((name.to_string(), in_post)),
                }
            }
            let resolved: Vec<String> = pre
                .into_iter()
                .flat_map(|(name, _)| idx.resolve(&name))
                .collect();
            idx.softdeps
                .entry(module.replace('-', "_"))
                .or_default()
                .extend(resolved);
        }
        Ok(idx)
    }

    /// The modules a name stands for: itself if it is a module, else every module
    /// with a matching alias (e.g. `crypto-crc32c`). Built-ins resolve to nothing.
    pub fn resolve(&self, name: &str) -> Vec<String> {
        let norm = name.replace('-', "_");
        if self.paths.contains_key(&norm) {
            return vec![norm];
        }
        if self.builtin.contains(&norm) {
            return Vec::new();
        }
        let mut out: Vec<String> = self
            .matching(name)
            .map(|(_, m)| m.clone())
            .filter(|m| self.paths.contains_key(m))
            .collect();
        out.dedup();
        out
    }

    /// Whether a name is a loadable module or built into the kernel.
    pub fn knows(&self, name: &str) -> bool {
        let norm = name.replace('-', "_");
        self.paths.contains_key(&norm) || self.builtin.contains(&norm)
    }

    /// The modules whose alias matches a device's modalias, in `modules.alias` order.
    pub fn for_modalias(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (_, module) in self.matching(modalias) {
            if !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }

    /// The (pattern, module) pairs whose pattern matches `text`.
    fn matching<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a (String, String)> + 'a {
        self.aliases
            .iter()
            .zip(&self.literal)
            .filter(move |((pattern, _), lit)| {
                text.as_bytes().starts_with(&pattern.as_bytes()[..**lit])
                    && glob_match(pattern, text)
            })
            .map(|(pair, _)| pair)
    }

    /// The named modules and everything they need, each after its dependencies (the
    /// order to load them in). Names that are not modules are returned as the error.
    pub fn closure<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<String>, Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut unknown = Vec::new();
        for name in names {
            let name = name.as_ref();
            let norm = name.replace('-', "_");
            if self.builtin.contains(&norm) {
                continue;
            }
            let resolved = self.resolve(name);
            if resolved.is_empty() {
                unknown.push(name.to_string());
            }
            for m in resolved {
                self.visit(&m, &mut seen, &mut order);
            }
        }
        if unknown.is_empty() {
            Ok(order)
        } else {
            Err(unknown)
        }
    }

    fn visit(&self, module: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !seen.insert(module.to_string()) {
            return;
        }
        for soft in self.softdeps.get(module).into_iter().flatten() {
            self.visit(soft, seen, order);
        }
        // modules.dep lists the deepest dependency last; load it first.
        for dep in self.deps.get(module).into_iter().flatten().rev() {
            self.visit(dep, seen, order);
        }
        order.push(module.to_string());
    }

    /// Modules whose path (relative to the module folder) starts with `prefix`.
    pub fn under(&self, prefix: &str) -> Vec<String> {
        let prefix = prefix.trim_end_matches('/');
        self.paths
            .iter()
            .filter(|(_, p)| {
                p.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The texts of `modules.dep` and `modules.softdep` for a subset of modules, as a
    /// module folder holding only that subset needs them.
    /// `stored` gives the name each module file has there (`.zst` appended when the
    /// files are compressed).
    pub fn subset_texts(
        &self,
        keep: &BTreeSet<String>,
        stored: impl Fn(&str) -> String,
    ) -> (String, String) {
        let mut dep = String::new();
        for (name, path) in &self.paths {
            if !keep.contains(name) {
                continue;
            }
            dep.push_str(&stored(path));
            dep.push(':');
            for d in self.deps.get(name).into_iter().flatten() {
                if let Some(p) = self.paths.get(d) {
                    dep.push(' ');
                    dep.push_str(&stored(p));
                }
            }
            dep.push('\n');
        }
        let mut soft = String::new();
        let mut names: Vec<&String> = self.softdeps.keys().filter(|k| keep.contains(*k)).collect();
        names.sort();
        for name in names {
            let pre: Vec<&str> = self.softdeps[name]
                .iter()
                .filter(|m| keep.contains(*m))
                .map(String::as_str)
                .collect();
            if !pre.is_empty() {
                soft.push_str(&format!("softdep {name} pre: {}\n", pre.join(" ")));
            }
        }
        (dep, soft)
    }
}

/// Shell-style matching as `modules.alias` uses it: `*`, `?` and `[...]` classes.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(&p[pi..], t[ti])
                        && matched
                    {
                        pi += next;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[...]` class at the start of `p`; returns whether it
/// matched and the class's length, or `None` if the class is not closed.
fn class_match(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko kernel/lib/crc16.ko
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/ata/ahci.ko: kernel/drivers/ata/libahci.ko kernel/drivers/ata/libata.ko
kernel/drivers/ata/libahci.ko: kernel/drivers/ata/libata.ko
kernel/drivers/ata/libata.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
";
    const ALIAS: &str = "\
alias crypto-crc32c crc32c_generic
alias crypto-crc32c crc32c_intel
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v*d*sv*sd*bc01sc06i01* ahci
";
    const SOFT: &str = "softdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(DEP, ALIAS, SOFT, "kernel/drivers/block/loop.ko\n").unwrap()
    }

    #[test]
    fn closure_puts_dependencies_and_softdeps_first() {
        let order = index().closure(&["ext4"]).unwrap();
        let pos = |m: &str| order.iter().position(|x| x == m).unwrap();
        assert_eq!(order.len(), 6, "{order:?}");
        for dep in ["mbcache", "jbd2", "crc16", "crc32c_generic", "crc32c_intel"] {
            assert!(pos(dep) < pos("ext4"), "{dep} after ext4 in {order:?}");
        }
        let order = index().closure(&["ahci"]).unwrap();
        assert_eq!(order, ["libata", "libahci", "ahci"]);
    }

    #[test]
    fn builtins_are_satisfied_and_unknown_names_reported() {
        assert_eq!(index().closure(&["loop"]).unwrap(), Vec::<String>::new());
        assert_eq!(index().closure(&["ext4", "nope"]).unwrap_err(), ["nope"]);
    }

    #[test]
    fn modaliases_match_like_udev() {
        let idx = index();
        assert_eq!(
            idx.for_modalias("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"),
            ["e1000"]
        );
        assert_eq!(
            idx.for_modalias("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"),
            ["ahci"]
        );
        assert!(
            idx.for_modalias("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00")
                .is_empty()
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("x[0-9]y", "x5y"));
        assert!(!glob_match("x[!0-9]y", "x5y"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("abc", "abcd"));
        assert!(glob_match(
            "dmi*:svnQEMU:*",
            "dmi:bvnSeaBIOS:svnQEMU:pnStandardPC"
        ));
    }

    #[test]
    fn subset_texts_keep_only_the_subset() {
        let idx = index();
        let keep: BTreeSet<String> = idx.closure(&["ahci"]).unwrap().into_iter().collect();
        let (dep, soft) = idx.subset_texts(&keep, |p| format!("{p}.zst"));
        assert!(dep.contains(
            "kernel/drivers/ata/ahci.ko.zst: kernel/drivers/ata/libahci.ko.zst kernel/drivers/ata/libata.ko.zst"
        ));
        let back = ModuleIndex::parse(&dep, "", &soft, "").unwrap();
        assert_eq!(
            back.closure(&["ahci"]).unwrap(),
            ["libata", "libahci", "ahci"]
        );
        assert!(!dep.contains("ext4"));
        assert!(soft.is_empty());
    }

    #[test]
    fn names_and_syntax_errors() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert!(ModuleIndex::parse("no colon here", "", "", "").is_err());
        assert!(ModuleIndex::parse("", "alias onlytwo", "", "").is_err());
        let dir = tempfile::tempdir().unwrap();
        let err = ModuleIndex::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("modules.dep") && err.contains("depmod"),
            "{err}"
        );
    }

    #[test]
    fn the_build_hosts_kernel_resolves_like_modprobe() {
        // Checked against `modprobe --show-depends` on Debian 12's kernel where present.
        let Some(dir) = fs::read_dir("/lib/modules")
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("modules.dep").exists())
        else {
            return;
        };
        let idx = ModuleIndex::open(&dir).unwrap();
        let order = idx.closure(&["ext4", "virtio_net", "raid456"]).unwrap();
        let pos = |m: &str| order.iter().position(|x| x == m);
        assert!(pos("jbd2") < pos("ext4") && pos("jbd2").is_some());
        assert!(pos("raid6_pq") < pos("raid456") && pos("raid6_pq").is_some());
        assert!(
            pos("crc32c_generic").is_some(),
            "softdep crypto-crc32c: {order:?}"
        );
    }
}
