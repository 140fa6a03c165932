//! The shared-library closure of dynamically linked programs: each ELF's interpreter
//! (`PT_INTERP`) and `DT_NEEDED` libraries, found the way the dynamic loader finds them
//! (`DT_RUNPATH`/`DT_RPATH`, then the system folders).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where Debian's loader looks when a binary names no run path.
pub const SYSTEM_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What an ELF file asks of the loader.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Needs {
    /// The program interpreter, for dynamically linked executables.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` entries, in order.
    pub libraries: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` folders.
    pub run_paths: Vec<String>,
}

/// Reads the interpreter and needed libraries of an ELF file. A static binary needs
/// nothing; a file that is not ELF is an error naming it.
pub fn needs(path: &Path) -> Result<Needs> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf = goblin::elf::Elf::parse(&data)
        .with_context(|| format!("{} is not an ELF file the loader could run", path.display()))?;
    let origin = path
        .parent()
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_default();
    let run_paths = elf
        .runpaths
        .iter()
        .chain(elf.rpaths.iter())
        .flat_map(|p| p.split(':'))
        .map(|p| p.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin))
        .collect();
    Ok(Needs {
        interpreter: elf.interpreter.map(str::to_string),
        libraries: elf.libraries.iter().map(|s| s.to_string()).collect(),
        run_paths,
    })
}

/// Finds a library by name in the run paths, then the system folders (under `root`,
/// which is `/` except in tests).
fn find_library(root: &Path, name: &str, run_paths: &[String]) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name)).filter(|p| root.join(rel(p)).exists());
    }
    run_paths
        .iter()
        .map(String::as_str)
        .chain(SYSTEM_DIRS.iter().copied())
        .map(|d| Path::new(d).join(name))
        .find(|p| root.join(rel(p)).exists())
}

fn rel(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// Every file the given programs need to run: the interpreter and the transitive
/// closure of their libraries, as absolute paths on the build host (sorted). A library
/// that cannot be found is an error naming the program that needs it.
pub fn closure(programs: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    let mut queue: Vec<(PathBuf, PathBuf)> =
        programs.iter().map(|p| (p.clone(), p.clone())).collect();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    while let Some((file, wanted_by)) = queue.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let needs = needs(&file)?;
        if let Some(interp) = &needs.interpreter {
            let p = PathBuf::from(interp);
            if !p.exists() {
                bail!(
                    "{} needs the loader {interp}, which this build host does not have",
                    wanted_by.display()
                );
            }
            out.insert(p);
        }
        for lib in &needs.libraries {
            let Some(found) = find_library(Path::new("/"), lib, &needs.run_paths) else {
                bail!(
                    "{} needs {lib} (through {}), which is in none of {}; install the package that has it",
                    wanted_by.display(),
                    file.display(),
                    SYSTEM_DIRS.join(", ")
                );
            };
            out.insert(found.clone());
            queue.push((found, wanted_by.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_needs_libc_and_the_loader() {
        let sh = PathBuf::from("/bin/sh");
        let n = needs(&sh).unwrap();
        assert!(
            n.interpreter
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux")),
            "{n:?}"
        );
        assert!(
            n.libraries.iter().any(|l| l.starts_with("libc.so")),
            "{n:?}"
        );
        let all = closure(&[sh]).unwrap();
        assert!(all.iter().any(|p| p.ends_with("libc.so.6")), "{all:?}");
        assert!(all.iter().all(|p| p.exists()));
    }

    #[test]
    fn a_non_elf_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("script");
        fs::write(&f, "#!/bin/sh\necho hi\n").unwrap();
        let err = format!("{:#}", needs(&f).unwrap_err());
        assert!(
            err.contains("script") && err.contains("not an ELF"),
            "{err}"
        );
    }
}
