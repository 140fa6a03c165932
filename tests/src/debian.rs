//! A Debian 12 "source server" disk for the QEMU suites: debootstrap, a GPT disk with a
//! BIOS boot partition and an ext4 root, GRUB, static networking with a VLAN (ifupdown),
//! nginx, and two services: one that builds RAID1 + LVM + xfs + ext4 on the second and
//! third disks at boot and copies `/usr/share/doc` and `/usr/share/zoneinfo` onto them (the host kernel has no md or device-mapper, so the guest does
//! it), one that runs the Ferry agent from a CD the test makes (so one cached disk
//! serves every test, whatever its manager keys; QEMU's fw_cfg reads a 7 MB file far
//! too slowly on TCG).
//!
//! The disk is cached under `~/.cache/ferry/`; bump [`VERSION`] when the build changes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Version of the disk recipe (part of the cached file's name).
pub const VERSION: u32 = 4;
/// Packages installed by debootstrap.
pub const PACKAGES: &str = "linux-image-amd64,systemd-sysv,udev,iproute2,ifupdown,vlan,mdadm,lvm2,xfsprogs,nginx-light,procps,\
     grub2-common,grub-pc-bin,grub-efi-amd64-bin,dosfstools";
/// The root filesystem's UUID.
pub const ROOT_UUID: &str = "5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f50";
/// MACs of the guest's NICs.
pub const MACS: [&str; 2] = ["52:54:00:f0:00:01", "52:54:00:f0:00:02"];

fn cache() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache/ferry")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn sh(script: &str) -> Result<String> {
    run(Command::new("sh").args(["-euc", script]))
}

/// A disk being built: the cache's build lock (one process or test at a time builds a
/// disk; the others then find it built) and an emptied work folder holding the disk
/// (`disk.raw`) and its mount point (`mnt/`) until [`Build::finish`].
struct Build {
    _lock: nix::fcntl::Flock<std::fs::File>,
    work: PathBuf,
    /// The root tree's build the disk is made from (see [`root_tree_build`]).
    root: String,
}

impl Build {
    fn tmp(&self) -> PathBuf {
        self.work.join("disk.raw")
    }

    fn mnt(&self) -> PathBuf {
        self.work.join("mnt")
    }

    /// Moves the built disk to `disk` and removes the work folder.
    fn finish(self, disk: &Path) -> Result<()> {
        std::fs::rename(self.tmp(), disk)?;
        std::fs::write(disk.with_extension("root"), &self.root)?;
        let _ = std::fs::remove_dir_all(&self.work);
        Ok(())
    }
}

/// The cached disk `STEM.raw`, and its [`Build`] (work folder `STEM.build`) when it is
/// still to be built: when it is missing or was made from another build of the root
/// tree (recorded in `STEM.root`), since the suites compare restored files with that
/// tree.
fn cached(stem: &str) -> Result<(PathBuf, Option<Build>)> {
    let dir = cache();
    let disk = dir.join(format!("{stem}.raw"));
    let made_from = || std::fs::read_to_string(disk.with_extension("root")).ok();
    let current = |root: &Option<String>| disk.is_file() && root.is_some() && made_from() == *root;
    if current(&root_tree_build()) {
        return Ok((disk, None));
    }
    std::fs::create_dir_all(&dir)?;
    let lock_file = dir.join("build.lock");
    let lock = nix::fcntl::Flock::lock(
        std::fs::File::create(&lock_file)?,
        nix::fcntl::FlockArg::LockExclusive,
    )
    .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", lock_file.display()))?;
    root_tree()?;
    let root = root_tree_build();
    if current(&root) {
        return Ok((disk, None));
    }
    let root = root.context("the root tree's build stamp is missing")?;
    let _ = std::fs::remove_file(&disk);
    let work = dir.join(format!("{stem}.build"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("mnt"))?;
    Ok((
        disk,
        Some(Build {
            _lock: lock,
            work,
            root,
        }),
    ))
}

/// Writes each set of files (with the systemd units to enable) and `fstab` into the
/// folder `work/files`, to be copied over a root once it is on its disk (the
/// debootstrapped root tree is shared by every recipe and stays as debootstrap left it).
fn stage(work: &Path, sets: &[(&[ImageFile], &[&str])], fstab: &str) -> Result<PathBuf> {
    let staged = work.join("files");
    for (files, units) in sets {
        install(&staged, files, units)?;
    }
    std::fs::write(staged.join("etc/fstab"), fstab)?;
    Ok(staged)
}

/// A file written into an image: path, mode, text.
type ImageFile = (&'static str, u32, &'static str);

/// Files written into the image.
const FILES: &[ImageFile] = &[
    ("/etc/hostname", 0o644, "ferry-src\n"),
    (
        "/etc/hosts",
        0o644,
        "127.0.0.1 localhost\n127.0.1.1 ferry-src\n",
    ),
    (
        "/etc/resolv.conf",
        0o644,
        "nameserver 10.0.2.3\nsearch example.test\n",
    ),
    (
        "/etc/network/interfaces",
        0o644,
        "auto lo\niface lo inet loopback\n\n\
         auto eth0\niface eth0 inet static\n    address 10.0.2.15/24\n    gateway 10.0.2.2\n\n\
         auto eth1\niface eth1 inet manual\n\n\
         auto eth1.100\niface eth1.100 inet static\n    address 192.0.2.20/24\n    vlan-raw-device eth1\n",
    ),
    (
        "/usr/local/sbin/ferry-storage",
        0o755,
        "#!/bin/sh\n# RAID1 over vdb+vdc, LVM on it, xfs and ext4 on two volumes.\nset -eu\n\
         if ! [ -e /dev/md0 ]; then\n\
           mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --name=data /dev/vdb /dev/vdc\n\
           pvcreate -q /dev/md0\n  vgcreate -q data /dev/md0\n\
           lvcreate -q -y -n web -L 400M data\n  lvcreate -q -y -n logs -L 200M data\n\
           mkfs.xfs -q -L web /dev/data/web\n  mkfs.ext4 -q -L logs /dev/data/logs\n\
         fi\n\
         mkdir -p /srv/web /srv/logs\n\
         grep -q /srv/web /etc/fstab || printf 'LABEL=web /srv/web xfs defaults,noatime 0 2\\nLABEL=logs /srv/logs ext4 defaults 0 2\\n' >> /etc/fstab\n\
         mount -a\n\
         # Known content on the volumes, for capture tests: copies of files of the root.\n\
         [ -e /srv/logs/doc ] || cp -a /usr/share/doc /srv/logs/doc\n\
         [ -e /srv/web/zoneinfo ] || cp -a /usr/share/zoneinfo /srv/web/zoneinfo\n",
    ),
    (
        "/etc/systemd/system/ferry-storage.service",
        0o644,
        "[Unit]\nDescription=Test storage: RAID1 + LVM + xfs + ext4\nAfter=local-fs.target\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/ferry-storage\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    ),
    (
        "/usr/local/sbin/ferry-agent-start",
        0o755,
        "#!/bin/sh\n# The agent and its config come on a CD labelled FERRYAGENT.\nset -eu\n\
         mkdir -p /etc/ferry /var/lib/ferry-agent /run/ferry-cd\n\
         for i in $(seq 60); do [ -e /dev/disk/by-label/FERRYAGENT ] && break; sleep 1; done\n\
         mount -o ro /dev/disk/by-label/FERRYAGENT /run/ferry-cd\n\
         cp /run/ferry-cd/ferry-agent /usr/local/bin/ferry-agent\nchmod 755 /usr/local/bin/ferry-agent\n\
         cp /run/ferry-cd/agent.yaml /etc/ferry/agent.yaml\numount /run/ferry-cd\n\
         echo FERRY-SOURCE-READY > /dev/ttyS0\n\
         exec /usr/local/bin/ferry-agent run --config /etc/ferry/agent.yaml\n",
    ),
    (
        "/etc/systemd/system/ferry-agent.service",
        0o644,
        "[Unit]\nDescription=Ferry agent\nAfter=ferry-storage.service network-online.target nginx.service\nWants=network-online.target\n\n\
         [Service]\nExecStart=/usr/local/sbin/ferry-agent-start\nRestart=on-failure\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    ),
];

/// The cached debootstrapped Debian 12 root (minbase and the suite's packages),
/// built when missing.
pub fn root_tree() -> Result<PathBuf> {
    let dir = cache();
    std::fs::create_dir_all(dir.join("debcache"))?;
    let root = root_tree_path();
    let stamp = root.with_extension("build");
    if !root.join("etc/debian_version").is_file() {
        let _ = std::fs::remove_file(&stamp);
        let _ = std::fs::remove_dir_all(&root);
        run(Command::new("debootstrap").args([
            "--variant=minbase",
            &format!("--cache-dir={}", dir.join("debcache").display()),
            &format!("--include={PACKAGES}"),
            "bookworm",
            &root.to_string_lossy(),
            "http://deb.debian.org/debian",
        ]))
        .context("debootstrap (Debian: debootstrap; needs deb.debian.org)")?;
    }
    if !stamp.is_file() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        std::fs::write(&stamp, now.as_nanos().to_string())?;
    }
    Ok(root)
}

fn root_tree_path() -> PathBuf {
    cache().join(format!("debian-root-v{VERSION}"))
}

/// Which build of the root tree is on this machine: a stamp written beside the tree
/// when it is made (`None` while there is none).
fn root_tree_build() -> Option<String> {
    std::fs::read_to_string(root_tree_path().with_extension("build")).ok()
}

/// The cached source disk (raw, 3 GiB sparse), built when missing.
pub fn source_disk() -> Result<PathBuf> {
    let (disk, build) = cached(&format!("debian-src-v{VERSION}"))?;
    let Some(build) = build else {
        return Ok(disk);
    };
    let root = root_tree()?;
    let staged = stage(
        &build.work,
        &[(FILES, &["ferry-storage.service", "ferry-agent.service"])],
        &format!("UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"),
    )?;
    let version = kernel_version(&root)?;
    let (tmp, mnt) = (build.tmp(), build.mnt());
    let grub_cfg = grub_cfg(ROOT_UUID, "/boot", &version, &format!("UUID={ROOT_UUID}"));
    let script = format!(
        "truncate -s 3G '{tmp}'\n\
         sgdisk -Z -n1:0:+1M -t1:EF02 -c1:bios -n2:0:0 -t2:8300 -c2:root '{tmp}' >/dev/null\n\
         L=$(losetup -f --show '{tmp}')\n\
         trap 'umount \"{mnt}\" 2>/dev/null || true; partx -d $L 2>/dev/null || true; losetup -d $L' EXIT\n\
         partx -a $L\n\
         mkfs.ext4 -q -L root -U {ROOT_UUID} ${{L}}p2\n\
         mount ${{L}}p2 '{mnt}'\n\
         cp -a '{root}/.' '{mnt}/'\n\
         cp -a '{staged}/.' '{mnt}/'\n\
         mkdir -p '{mnt}/boot/grub'\n\
         grub-install --target=i386-pc --boot-directory='{mnt}/boot' --modules='part_gpt ext2' $L 2>/dev/null\n\
         cat > '{mnt}/boot/grub/grub.cfg' <<'EOF'\n{grub_cfg}EOF\n",
        tmp = tmp.display(),
        mnt = mnt.display(),
        root = root.display(),
        staged = staged.display(),
    );
    sh(&script).context("building the Debian source disk")?;
    build.finish(&disk)?;
    Ok(disk)
}

/// A GRUB config on the serial console that boots kernel `version` from the
/// filesystem with UUID `boot` (kernel and initramfs in its folder `dir`: `/boot`, or
/// `""` for a /boot partition) with root filesystem `root`.
fn grub_cfg(boot: &str, dir: &str, version: &str, root: &str) -> String {
    format!(
        "set timeout=0\nserial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n\
         insmod part_gpt\ninsmod ext2\nsearch --no-floppy --fs-uuid --set=root {boot}\n\
         menuentry 'Debian' {{\n  linux {dir}/vmlinuz-{version} root={root} ro console=ttyS0,115200 net.ifnames=0 panic=30\n  initrd {dir}/initrd.img-{version}\n}}\n"
    )
}

/// [`grub_cfg`] with what `grub-mkconfig` puts around the entries and a system's boot
/// relies on: the environment block loaded, `next_entry` booted once and cleared
/// (`grub-reboot`, Ferry's grub-once), `custom.cfg` sourced (`41_custom`).
fn grub_cfg_like_mkconfig(boot: &str, dir: &str, version: &str, root: &str) -> String {
    format!(
        "if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
         if [ \"${{next_entry}}\" ] ; then
   set default=\"${{next_entry}}\"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default=\"0\"
fi
         {}         if [ -f  ${{config_directory}}/custom.cfg ]; then
  source ${{config_directory}}/custom.cfg
         elif [ -z \"${{config_directory}}\" -a -f  $prefix/custom.cfg ]; then
  source $prefix/custom.cfg
fi
",
        grub_cfg(boot, dir, version, root)
    )
}

/// Writes `files` into the tree at `root` and enables the systemd `units`.
fn install(root: &Path, files: &[(&str, u32, &str)], units: &[&str]) -> Result<()> {
    for (path, mode, text) in files {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap_or(Path::new("/")))?;
        std::fs::write(&p, text)?;
        run(Command::new("chmod").arg(format!("{mode:o}")).arg(&p))?;
    }
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    for unit in units {
        let link = wants.join(unit);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("/etc/systemd/system/{unit}"), link)?;
        }
    }
    Ok(())
}

/// The version of the kernel in the debootstrapped tree at `root` (`6.1.0-…-amd64`).
pub fn kernel_version(root: &Path) -> Result<String> {
    let kernel = std::fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.starts_with("vmlinuz-"))
        .context("no kernel in the debootstrapped root")?;
    Ok(kernel.trim_start_matches("vmlinuz-").to_string())
}

/// Version of the root-on-LVM disk recipe (part of the cached file's name).
pub const LVM_VERSION: u32 = 1;
/// The `/boot` filesystem's UUID on the root-on-LVM disk.
pub const LVM_BOOT_UUID: &str = "5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f51";
/// The root filesystem's UUID on the root-on-LVM disk.
pub const LVM_ROOT_UUID: &str = "5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f52";
/// Size of the root volume; the rest of the volume group `sys` (about 740 MiB of the
/// 3 GiB disk) stays free for snapshots.
pub const LVM_ROOT_SIZE: &str = "2G";

/// What the root-on-LVM system adds to the source system's files.
const LVM_FILES: &[ImageFile] = &[
    (
        "/usr/local/sbin/ferry-ticker",
        0o755,
        r#"#!/bin/sh
# Writes one counter into two files at the two ends of the root's tree, the last one
# first, each by an atomic rename: in any point-in-time copy of the filesystem
# /zzz-ticker/n holds /aaa-ticker/n or one more; a copy read live over a while does not.
# Every 25th value goes to the console.
mkdir -p /aaa-ticker /zzz-ticker
i=0
while :; do
    i=$((i+1))
    echo $i > /zzz-ticker/n.new && mv /zzz-ticker/n.new /zzz-ticker/n
    echo $i > /aaa-ticker/n.new && mv /aaa-ticker/n.new /aaa-ticker/n
    [ $((i % 25)) -ne 0 ] || echo "FERRY-TICK $i" > /dev/ttyS0
    sleep 0.2
done
"#,
    ),
    (
        "/etc/systemd/system/ferry-ticker.service",
        0o644,
        "[Unit]\nDescription=Test writer: one counter in two files\n\n\
         [Service]\nExecStart=/usr/local/sbin/ferry-ticker\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    ),
    (
        "/usr/local/sbin/ferry-build-lvm-root",
        0o755,
        r#"#!/bin/sh
# Runs as PID 1 on a scratch copy of the root (vda): makes root on LVM on vdb3, copies
# this root into it and has its initramfs find it there.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
set -eux
trap 'echo FERRY-BUILD-FAILED > /dev/ttyS0; sync; echo o > /proc/sysrq-trigger' EXIT
# The initramfs hands over /dev, /run, /proc and /sys mounted (mostly).
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mountpoint -q /run || mount -t tmpfs run /run
/lib/systemd/systemd-udevd --daemon
udevadm trigger --action=add
udevadm settle
pvcreate -ff -y /dev/vdb3
vgcreate sys /dev/vdb3
lvcreate -y -n root -L @SIZE@ sys
udevadm settle
mkfs.ext4 -q -L root -U @ROOT@ /dev/mapper/sys-root
mount /dev/mapper/sys-root /mnt
cp -ax /. /mnt/
rm -rf /mnt/boot /mnt/usr/local/sbin/ferry-build-lvm-root
mkdir -p /mnt/boot /mnt/proc /mnt/sys /mnt/dev /mnt/run
mount /dev/vdb2 /mnt/boot
printf '/dev/mapper/sys-root / ext4 errors=remount-ro 0 1\nUUID=@BOOT@ /boot ext4 defaults 0 2\n' > /mnt/etc/fstab
for d in dev proc sys run; do mount --bind /$d /mnt/$d; done
chroot /mnt update-initramfs -u -k all
lsinitramfs /mnt/boot/initrd.img-* | grep -q 'sbin/lvm$'
for d in run sys proc dev boot; do umount /mnt/$d; done
umount /mnt
vgchange -an sys
sync
trap - EXIT
echo FERRY-BUILD-DONE > /dev/ttyS0
echo o > /proc/sysrq-trigger
sleep 60
"#,
    ),
];

/// The cached Debian 12 disk with its root on LVM (raw, 3 GiB sparse), built when
/// missing: GPT with a BIOS boot partition, an ext4 `/boot` and an LVM PV holding the
/// volume group `sys` with the 2 GiB volume `root` (ext4) and room for snapshots.
/// The system is the source system's (static network, nginx, the agent from a CD,
/// without the RAID/LVM data disks) plus `ferry-ticker`.
///
/// The host kernel has no device-mapper, so a VM does the LVM part: the Debian kernel
/// boots a scratch copy of the root with a build script as init, which makes the
/// volume, copies the root into it and regenerates the initramfs in a chroot.
pub async fn lvm_root_disk() -> Result<PathBuf> {
    let (disk, build) = cached(&format!("debian-lvmroot-v{LVM_VERSION}"))?;
    let Some(build) = build else {
        return Ok(disk);
    };
    let root = root_tree()?;
    let version = kernel_version(&root)?;
    let work = build.work.clone();
    let (seed, tmp, mnt) = (work.join("seed.raw"), build.tmp(), build.mnt());

    // The seed: a copy of the root with the test's files, a plain ext4 on a whole disk.
    let lvm_files: Vec<(&str, u32, String)> = LVM_FILES
        .iter()
        .map(|(p, m, t)| {
            let t = t
                .replace("@SIZE@", LVM_ROOT_SIZE)
                .replace("@ROOT@", LVM_ROOT_UUID)
                .replace("@BOOT@", LVM_BOOT_UUID);
            (*p, *m, t)
        })
        .collect();
    let lvm_files: Vec<(&str, u32, &str)> = lvm_files
        .iter()
        .map(|(p, m, t)| (*p, *m, t.as_str()))
        .collect();
    let (seed_q, mnt_q) = (seed.display(), mnt.display());
    sh(&format!(
        "truncate -s 2G '{seed_q}'; mkfs.ext4 -q -F '{seed_q}'; mount -o loop '{seed_q}' '{mnt_q}'"
    ))?;
    let filled = sh(&format!("cp -a '{}/.' '{mnt_q}/'", root.display()))
        .and_then(|_| {
            install(
                &mnt,
                FILES,
                &["ferry-agent.service", "ferry-ticker.service"],
            )
        })
        .and_then(|()| install(&mnt, &lvm_files, &[]))
        .map(|()| {
            let wants = mnt.join("etc/systemd/system/multi-user.target.wants");
            let _ = std::fs::remove_file(wants.join("ferry-storage.service"));
        });
    sh(&format!("umount '{mnt_q}'"))?;
    filled.context("copying the Debian root for the root-on-LVM disk")?;

    // The disk: partitions and /boot with GRUB; the LVM PV stays blank for the VM.
    let grub_cfg = grub_cfg(LVM_BOOT_UUID, "", &version, "/dev/mapper/sys-root");
    sh(&format!(
        r#"truncate -s 3G '{tmp}'
sgdisk -Z -n1:0:+1M -t1:EF02 -c1:bios -n2:0:+256M -t2:8300 -c2:boot -n3:0:0 -t3:8E00 -c3:lvm '{tmp}' >/dev/null
L=$(losetup -f --show '{tmp}')
trap 'umount "{mnt_q}" 2>/dev/null || true; partx -d $L 2>/dev/null || true; losetup -d $L' EXIT
partx -a $L
mkfs.ext4 -q -L boot -U {LVM_BOOT_UUID} ${{L}}p2
mount ${{L}}p2 '{mnt_q}'
cp -a '{root}/boot/.' '{mnt_q}/'
grub-install --target=i386-pc --boot-directory='{mnt_q}' --modules='part_gpt ext2' $L 2>/dev/null
cat > '{mnt_q}/grub/grub.cfg' <<'EOF'
{grub_cfg}EOF
"#,
        tmp = tmp.display(),
        root = root.display(),
    ))
    .context("partitioning the root-on-LVM disk")?;

    // The VM: the Debian kernel, the seed as root, the build script as init.
    let console = work.join("console.log");
    let boot = root.join("boot");
    let mut args = crate::vm::machine_args(1, &console);
    args.extend([
        "-net".into(),
        "none".into(),
        "-drive".into(),
        format!("file={},if=virtio,format=raw", seed.display()),
        "-drive".into(),
        format!("file={},if=virtio,format=raw", tmp.display()),
        "-kernel".into(),
        boot.join(format!("vmlinuz-{version}"))
            .to_string_lossy()
            .into(),
        "-initrd".into(),
        boot.join(format!("initrd.img-{version}"))
            .to_string_lossy()
            .into(),
        "-append".into(),
        "root=/dev/vda rw init=/usr/local/sbin/ferry-build-lvm-root console=ttyS0,115200 panic=-1"
            .into(),
    ]);
    let mut vm = crate::vm::Qemu::start(&work, &console, &args, None)?;
    vm.wait_console("FERRY-BUILD-DONE", std::time::Duration::from_secs(2400))
        .await
        .context("building root on LVM in a VM")?;
    vm.wait_exit(std::time::Duration::from_secs(60)).await?;
    build.finish(&disk)?;
    Ok(disk)
}

/// QEMU options for the source server's two NICs: [`MACS`], the first on QEMU's user
/// network (the guest's 10.0.2.15, as its config says), the second on a closed one.
pub fn nic_args() -> Vec<String> {
    let mut a = Vec::new();
    for (i, mac) in MACS.iter().enumerate() {
        a.push("-netdev".into());
        a.push(if i == 0 {
            "user,id=n0".into()
        } else {
            format!("user,id=n{i},restrict=on")
        });
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=n{i},mac={mac}"));
    }
    a
}

/// A CD image (label `FERRYAGENT`) holding the agent binary and its config.
pub fn agent_cd(dest: &Path, agent: &Path, config: &Path) -> Result<()> {
    let dir = dest.with_extension("d");
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(agent, dir.join("ferry-agent"))?;
    std::fs::copy(config, dir.join("agent.yaml"))?;
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-V", "FERRYAGENT", "-o"])
        .arg(dest)
        .arg(&dir))
    .context("making the agent CD (Debian: xorriso)")?;
    Ok(())
}

/// Version of the web server disk recipe (part of the cached file's name).
pub const WEB_VERSION: u32 = 5;
/// The web server's root filesystem UUID.
pub const WEB_ROOT_UUID: &str = "5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f60";
/// The web server's `/var` (xfs) UUID.
pub const WEB_VAR_UUID: &str = "5e1f0c2a-7d3b-4c8e-9a6f-0b1c2d3e4f61";
/// The web server's ESP volume id (as vfat "UUID").
pub const WEB_ESP_UUID: &str = "0000-FE11";
/// The web server's NIC.
pub const WEB_MAC: &str = "52:54:00:f0:00:11";
macro_rules! web_marker {
    () => {
        "FERRY-MARKER web server 7c1e"
    };
}
/// The page nginx serves from `/var/www/html` on the web server.
pub const WEB_MARKER: &str = web_marker!();

/// What the web server's system adds to the debootstrapped root.
const WEB_FILES: &[ImageFile] = &[
    ("/etc/hostname", 0o644, "ferry-web\n"),
    (
        "/etc/hosts",
        0o644,
        "127.0.0.1 localhost\n127.0.1.1 ferry-web\n",
    ),
    (
        "/etc/network/interfaces",
        0o644,
        "auto lo\niface lo inet loopback\n\n\
         auto eth0\niface eth0 inet static\n    address 10.0.2.15/24\n    gateway 10.0.2.2\n",
    ),
    (
        "/etc/default/grub",
        0o644,
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT=0\nGRUB_DISTRIBUTOR=Debian\nGRUB_CMDLINE_LINUX_DEFAULT=\"\"\n\
         GRUB_CMDLINE_LINUX=\"console=ttyS0,115200 net.ifnames=0 panic=30\"\n\
         GRUB_TERMINAL=serial\nGRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n\
         GRUB_DISABLE_OS_PROBER=true\n",
    ),
    (
        "/var/www/html/index.html",
        0o644,
        concat!(web_marker!(), "\n"),
    ),
    (
        "/usr/local/sbin/ferry-report",
        0o755,
        "#!/bin/sh\n# Tells the console how this system came up: firmware, mounts, links, addresses.\n\
         fw=bios; [ -d /sys/firmware/efi ] && fw=uefi\n\
         {\n\
         for m in / /var; do echo \"FERRY-MOUNT $m $(findmnt -n -o FSTYPE,SOURCE $m)\"; done\n\
         df -B1M --output=target,size / /var | tail -n +2 | sed 's/^/FERRY-DF /'\n\
         ip -o link show | sed 's/^/FERRY-LINK /'\n\
         ip -o -4 addr show | sed 's/^/FERRY-ADDR /'\n\
         grep -h '^md' /proc/mdstat | sed 's/^/FERRY-MD /'\n\
         echo \"FERRY-BOOTED $(hostname) $fw\"\n\
         } > /dev/ttyS0\n",
    ),
    (
        "/etc/systemd/system/ferry-report.service",
        0o644,
        "[Unit]\nDescription=Boot report on the console\nAfter=network-online.target nginx.service\nWants=network-online.target\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/local/sbin/ferry-report\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    ),
];

/// The cached web server disk (raw, 3 GiB sparse), built when missing: a Debian 12
/// that boots by BIOS and by UEFI (GPT with a BIOS boot partition, an ESP holding
/// `EFI/BOOT/BOOTX64.EFI`, an ext4 root and an xfs `/var`), with GRUB's BIOS and UEFI
/// packages installed, static addressing on its one NIC, nginx serving
/// [`WEB_MARKER`] from `/var`, a boot report on the console (`FERRY-BOOTED`) and the
/// agent from a CD. The boot loaders on the disk are the host's GRUB (a deploy
/// installs the system's own).
pub fn web_source_disk() -> Result<PathBuf> {
    let (disk, build) = cached(&format!("debian-web-v{VERSION}.{WEB_VERSION}"))?;
    let Some(build) = build else {
        return Ok(disk);
    };
    let root = root_tree()?;
    let version = kernel_version(&root)?;
    let work = &build.work;
    let (tmp, mnt, efi) = (build.tmp(), build.mnt(), work.join("efi"));
    std::fs::create_dir_all(&efi)?;
    let grub_cfg = grub_cfg_like_mkconfig(
        WEB_ROOT_UUID,
        "/boot",
        &version,
        &format!("UUID={WEB_ROOT_UUID}"),
    );
    std::fs::write(work.join("grub.cfg"), &grub_cfg)?;
    // As Debian's own EFI GRUB does: its prefix on the disk, so the environment block
    // in /boot/grub is the one loaded and saved.
    std::fs::write(
        work.join("stub.cfg"),
        format!(
            "insmod part_gpt\ninsmod ext2\nsearch --no-floppy --fs-uuid --set=root {WEB_ROOT_UUID}\nset prefix=($root)/boot/grub\nconfigfile /boot/grub/grub.cfg\n"
        ),
    )?;
    let staged = stage(
        work,
        &[
            (&agent_files(), &["ferry-agent.service"]),
            (WEB_FILES, &["ferry-report.service"]),
        ],
        &format!(
            "UUID={WEB_ROOT_UUID} / ext4 errors=remount-ro 0 1\n\
             UUID={WEB_VAR_UUID} /var xfs defaults 0 2\n\
             UUID={WEB_ESP_UUID} /boot/efi vfat umask=0077 0 0\n"
        ),
    )?;
    let script = format!(
        r#"truncate -s 3G '{tmp}'
sgdisk -Z -n1:0:+1M -t1:EF02 -c1:bios -n2:0:+100M -t2:EF00 -c2:esp -n3:0:+2G -t3:8300 -c3:root -n4:0:0 -t4:8300 -c4:var '{tmp}' >/dev/null
L=$(losetup -f --show '{tmp}')
trap 'umount "{mnt}/var" 2>/dev/null || true; umount "{mnt}" 2>/dev/null || true; partx -d $L 2>/dev/null || true; losetup -d $L' EXIT
partx -a $L
mkfs.vfat -F 32 -n ESP -i {esp} ${{L}}p2 >/dev/null
mkfs.ext4 -q -L root -U {root_uuid} ${{L}}p3
mkfs.xfs -q -f -L var -m uuid={var_uuid} ${{L}}p4
mount ${{L}}p3 '{mnt}'
mkdir '{mnt}/var'
mount ${{L}}p4 '{mnt}/var'
cp -a '{root}/.' '{mnt}/'
cp -a '{staged}/.' '{mnt}/'
# A minimal server, as cloud images trim theirs: no package caches, documentation or
# translations, no drivers for sound, graphics, media, radios, InfiniBand or sensors.
rm -rf '{mnt}'/var/cache/apt/* '{mnt}'/var/lib/apt/lists/* '{mnt}'/usr/share/doc/* '{mnt}'/usr/share/locale/* '{mnt}'/usr/share/man/*
K='{mnt}/usr/lib/modules/{version}/kernel'
rm -rf $K/sound $K/drivers/gpu $K/drivers/media $K/drivers/net/wireless $K/drivers/infiniband $K/drivers/iio $K/drivers/staging $K/drivers/bluetooth $K/net/bluetooth $K/net/wireless $K/net/mac80211
depmod -b '{mnt}' {version}
mkdir -p '{mnt}/boot/grub' '{mnt}/boot/efi'
grub-install --target=i386-pc --boot-directory='{mnt}/boot' --modules='part_gpt ext2' $L 2>/dev/null
cp '{work}/grub.cfg' '{mnt}/boot/grub/grub.cfg'
grub-mkstandalone -O x86_64-efi -o '{efi}/BOOTX64.EFI' 'boot/grub/grub.cfg={work}/stub.cfg'
# As grub-install does for UEFI: the modules on the disk, under the prefix the stub sets.
cp -r /usr/lib/grub/x86_64-efi '{mnt}/boot/grub/'
export MTOOLS_SKIP_CHECK=1
mmd -i ${{L}}p2 ::/EFI ::/EFI/BOOT
mcopy -i ${{L}}p2 '{efi}/BOOTX64.EFI' ::/EFI/BOOT/BOOTX64.EFI
"#,
        tmp = tmp.display(),
        mnt = mnt.display(),
        efi = efi.display(),
        work = work.display(),
        root = root.display(),
        staged = staged.display(),
        esp = WEB_ESP_UUID.replace('-', ""),
        root_uuid = WEB_ROOT_UUID,
        var_uuid = WEB_VAR_UUID,
    );
    sh(&script).context("building the web server disk")?;
    build.finish(&disk)?;
    Ok(disk)
}

/// The source systems' files that start the agent from its CD, with the DNS config.
fn agent_files() -> Vec<ImageFile> {
    FILES
        .iter()
        .filter(|(p, _, _)| p.contains("ferry-agent") || *p == "/etc/resolv.conf")
        .copied()
        .collect()
}
