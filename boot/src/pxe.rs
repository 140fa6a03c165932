//! A PXE/TFTP tree for an existing DHCP and TFTP setup: iPXE for BIOS and UEFI
//! firmware that only speaks plain PXE, the Ferry kernel and ramdisk, and the script.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{INITRD, KERNEL, ipxe};

/// Where Debian's `ipxe` package puts its network boot programs.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";

/// Network boot programs: (file in the tree, file in [`IPXE_DIR`]).
const LOADERS: &[(&str, &str)] = &[
    ("undionly.kpxe", "undionly.kpxe"),
    ("ipxe.efi", "snponly.efi"),
];

/// What a tree was made of.
#[derive(Debug)]
pub struct Tree {
    /// The folder.
    pub dir: PathBuf,
    /// iPXE loaders that were not available (the tree still works for iPXE-capable NICs).
    pub missing_loaders: Vec<String>,
}

/// Writes `dir` with `vmlinuz`, `initrd.zst`, `boot.ipxe`, the iPXE loaders and a
/// `dnsmasq.conf` example that sends plain PXE clients to iPXE and iPXE to the script.
pub fn write_tree(
    dir: &Path,
    kernel: &Path,
    initrd: &Path,
    extra: &str,
    ipxe_dir: &Path,
) -> io::Result<Tree> {
    fs::create_dir_all(dir)?;
    for (src, name) in [(kernel, KERNEL), (initrd, INITRD)] {
        fs::copy(src, dir.join(name)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("copying {} into the PXE tree: {e}", src.display()),
            )
        })?;
    }
    fs::write(dir.join("boot.ipxe"), ipxe::boot_script("", extra))?;
    let mut missing = Vec::new();
    for (name, src) in LOADERS {
        match fs::copy(ipxe_dir.join(src), dir.join(name)) {
            Ok(_) => {}
            Err(_) => missing.push(format!("{}/{src}", ipxe_dir.display())),
        }
    }
    fs::write(
        dir.join("dnsmasq.conf"),
        format!(
            "# Serve this folder by TFTP and boot it: plain PXE firmware gets iPXE first,\n\
             # iPXE (user class \"iPXE\") gets the Ferry script.\n\
             enable-tftp\n\
             tftp-root={}\n\
             dhcp-userclass=set:ipxe,iPXE\n\
             dhcp-match=set:efi64,option:client-arch,7\n\
             dhcp-match=set:efi64,option:client-arch,9\n\
             dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n\
             dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi\n\
             dhcp-boot=tag:ipxe,boot.ipxe\n",
            dir.display()
        ),
    )?;
    Ok(Tree {
        dir: dir.to_path_buf(),
        missing_loaders: missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_has_the_files_and_names_missing_loaders() {
        let src = tempfile::tempdir().unwrap();
        let (k, i) = (src.path().join("k"), src.path().join("i"));
        fs::write(&k, b"kernel").unwrap();
        fs::write(&i, b"initrd").unwrap();
        let ipxe = src.path().join("ipxe");
        fs::create_dir(&ipxe).unwrap();
        fs::write(ipxe.join("undionly.kpxe"), b"x").unwrap();
        let out = src.path().join("tree");
        let tree = write_tree(&out, &k, &i, "ferry.debug", &ipxe).unwrap();
        assert_eq!(fs::read(out.join("vmlinuz")).unwrap(), b"kernel");
        assert_eq!(fs::read(out.join("initrd.zst")).unwrap(), b"initrd");
        assert!(
            fs::read_to_string(out.join("boot.ipxe"))
                .unwrap()
                .contains("ferry.debug")
        );
        assert!(out.join("undionly.kpxe").exists());
        assert_eq!(tree.missing_loaders.len(), 1);
        assert!(tree.missing_loaders[0].ends_with("snponly.efi"));
        let err = write_tree(&out, &src.path().join("nope"), &i, "", &ipxe).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
