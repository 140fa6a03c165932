//! The few system calls the ramdisk's init needs that std does not offer: mounts,
//! module loading, power-off, IPv4 interface and route set-up (ioctls), and loading a
//! kernel for kexec (the installed agent's `boot-ramdisk`).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use nix::kmod::{ModuleInitFlags, finit_module};
use nix::mount::{MsFlags, mount};

/// Mounts a pseudo filesystem, creating the mount point; "already mounted" is fine.
pub fn mount_fs(kind: &str, target: &str, options: Option<&str>) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    match mount(Some(kind), target, Some(kind), MsFlags::MS_NOSUID, options) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(io::Error::other(format!(
            "mounting {kind} on {target}: {e}"
        ))),
    }
}

/// What loading one module came to.
pub enum Load {
    /// Loaded now.
    Loaded,
    /// It was loaded already.
    Already,
}

/// Loads one module file into the kernel; `.zst` files are decompressed first (this
/// kernel cannot decompress modules itself).
pub fn load_module(path: &Path) -> io::Result<Load> {
    let params = CString::default();
    let result = if path.extension().is_some_and(|e| e == "zst") {
        let image = zstd::stream::decode_all(File::open(path)?)?;
        nix::kmod::init_module(&image, &params)
    } else {
        finit_module(&File::open(path)?, &params, ModuleInitFlags::empty())
    };
    match result {
        Ok(()) => Ok(Load::Loaded),
        Err(nix::errno::Errno::EEXIST) => Ok(Load::Already),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Flushes file systems and powers the machine off (or reboots it). Returns only if
/// the kernel refused.
pub fn power(reboot: bool) -> io::Error {
    power_by(if reboot {
        nix::sys::reboot::RebootMode::RB_AUTOBOOT
    } else {
        nix::sys::reboot::RebootMode::RB_POWER_OFF
    })
}

/// Flushes file systems and reboots, powers off or kexecs by `mode`. Returns only if
/// the kernel refused.
pub fn power_by(mode: nix::sys::reboot::RebootMode) -> io::Error {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(mode) {
        Ok(never) => match never {},
        Err(e) => io::Error::from_raw_os_error(e as i32),
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the ioctls take it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Sock(libc::c_int);

impl Sock {
    fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Sock(fd))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
        self.ioctl_allowing(request, arg, what, None)
    }

    /// Like `ioctl`, treating the errno `fine` as success.
    fn ioctl_allowing<T>(
        &self,
        request: libc::c_ulong,
        arg: &mut T,
        what: &str,
        fine: Option<i32>,
    ) -> io::Result<()> {
        // SAFETY: each caller passes the struct type its request expects.
        let rc = unsafe { libc::ioctl(self.0, request as _, arg as *mut T) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if fine.is_some() && e.raw_os_error() == fine {
                return Ok(());
            }
            return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: the fd is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Sets an interface up.
pub fn link_up(name: &str) -> io::Result<()> {
    let s = Sock::new()?;
    let mut req = ifreq(name)?;
    s.ioctl(
        libc::SIOCGIFFLAGS,
        &mut req,
        &format!("reading flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    s.ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("setting {name} up"))
}

/// Gives an interface an IPv4 address and netmask.
pub fn set_address(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let s = Sock::new()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    s.ioctl(
        libc::SIOCSIFADDR,
        &mut req,
        &format!("setting {name} to {addr}"),
    )?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr(netmask(prefix));
    s.ioctl(
        libc::SIOCSIFNETMASK,
        &mut req,
        &format!("setting the netmask of {name}"),
    )
}

/// Adds the default route through a gateway; an existing one is left alone.
pub fn add_default_route(name: &str, gateway: Ipv4Addr) -> io::Result<()> {
    add_route(name, Ipv4Addr::UNSPECIFIED, 0, Some(gateway))
}

/// Adds a route to `dst/prefix` out of interface `name`, through `gateway` or on the
/// link; an existing one is left alone.
pub fn add_route(
    name: &str,
    dst: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
) -> io::Result<()> {
    let s = Sock::new()?;
    let dev = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: rtentry is plain old data; all-zero is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(dst);
    rt.rt_genmask = sockaddr(netmask(prefix));
    rt.rt_flags = libc::RTF_UP;
    if let Some(gw) = gateway {
        rt.rt_gateway = sockaddr(gw);
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    if prefix == 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
    let via = gateway.map_or(format!("on {name}"), |g| format!("via {g}"));
    match s.ioctl(
        libc::SIOCADDRT,
        &mut rt,
        &format!("adding the route to {dst}/{prefix} {via}"),
    ) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Sets an interface's MTU.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let s = Sock::new()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    s.ioctl(
        libc::SIOCSIFMTU,
        &mut req,
        &format!("setting the MTU of {name} to {mtu}"),
    )
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    })
}

/// Loads `kernel` and `initrd` for a later kexec reboot (`kexec_file_load`: the kernel
/// checks the image itself, and its signature where it must).
pub fn kexec_file_load(kernel: &File, initrd: &File, cmdline: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let line = CString::new(cmdline).map_err(io::Error::other)?;
    let len = line.as_bytes_with_nul().len();
    // SAFETY: kexec_file_load(2) with two open fds, a NUL-terminated command line and
    // its length including the NUL, and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd.as_raw_fd(),
            len,
            line.as_ptr(),
            0usize,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps one child, blocking; `None` when there are no children.
pub fn reap() -> Option<(i32, Option<i32>)> {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) => return Some((pid.as_raw(), Some(code))),
            Ok(WaitStatus::Signaled(pid, _, _)) => return Some((pid.as_raw(), None)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
}

/// Random bits that never wait for the kernel's entropy pool (`GRND_INSECURE`): for
/// values that only need to differ between machines, such as a DHCP transaction id.
/// Before the pool is ready the blocking `getrandom` can stall boot for a second or
/// more on machines without a hardware RNG.
pub fn quick_random_u32() -> u32 {
    const GRND_INSECURE: libc::c_uint = 0x0004;
    let mut b = [0u8; 4];
    // SAFETY: `b` is a valid, writable buffer of the given length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), GRND_INSECURE) };
    if n == 4 {
        return u32::from_ne_bytes(b);
    }
    // Kernels before 5.6 lack GRND_INSECURE: the clock's low bits differ enough.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (std::process::id() << 16)
}

/// Starts the kernel filling its entropy pool now, in the background: the first
/// blocking `getrandom` makes the kernel gather timing jitter until the pool is ready,
/// and the agent's TLS and keys need it soon. Started early, that wait overlaps
/// driver loading and DHCP instead of following them.
pub fn warm_entropy() {
    std::thread::spawn(|| {
        let mut b = [0u8; 1];
        // SAFETY: `b` is a valid, writable buffer of the given length.
        let _ = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    });
}
