//! The raw system calls of PID 1, each behind a safe function, and the only `unsafe` of
//! guest-init: a block device's buffer flush and the IPv4 setup of QEMU's user-mode network,
//! through nix's typed ioctl wrappers.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use shoal_sandbox::sys::ifreq;

// BLKFLSBUF is `_IO(0x12, 97)` (linux/fs.h; not in the libc crate).
nix::ioctl_none!(
    /// BLKFLSBUF: drops a block device's cached buffers.
    blkflsbuf,
    0x12,
    97
);
nix::ioctl_write_ptr_bad!(
    /// SIOCSIFADDR: sets an interface's address from an `ifreq` naming it.
    siocsifaddr,
    libc::SIOCSIFADDR,
    libc::ifreq
);
nix::ioctl_write_ptr_bad!(
    /// SIOCSIFNETMASK: sets an interface's netmask from an `ifreq` naming it.
    siocsifnetmask,
    libc::SIOCSIFNETMASK,
    libc::ifreq
);
nix::ioctl_write_ptr_bad!(
    /// SIOCADDRT: adds a route.
    siocaddrt,
    libc::SIOCADDRT,
    libc::rtentry
);

/// Drops the block device's cached buffers, so the next reads see what the host wrote since.
pub fn flush_block_buffers(dev: &File) -> io::Result<()> {
    // SAFETY: BLKFLSBUF takes no argument and only drops this device's cached buffers.
    unsafe { blkflsbuf(dev.as_raw_fd()) }?;
    Ok(())
}

/// An IPv4 address as a `sockaddr`, laid out as a `sockaddr_in` (family, port 0, address in
/// network order, zeros): what the interface and route ioctls take.
fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    // sin_port is sa_data[0..2] (0); sin_addr follows.
    for (dst, src) in sa_data[2..6].iter_mut().zip(ip.octets()) {
        *dst = src as libc::c_char;
    }
    libc::sockaddr { sa_family: libc::AF_INET as libc::sa_family_t, sa_data }
}

fn inet_socket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    Ok(socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?)
}

/// Gives interface `name` the address `addr` with `netmask` (SIOCSIFADDR, SIOCSIFNETMASK).
pub fn set_ipv4(name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    // SAFETY: SIOCSIFADDR reads the ifreq we own, whose address member was just written.
    unsafe { siocsifaddr(sock.as_raw_fd(), &req) }.map_err(|e| io::Error::other(format!("its address: {e}")))?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(netmask);
    // SAFETY: SIOCSIFNETMASK reads the ifreq we own, whose netmask member was just written.
    unsafe { siocsifnetmask(sock.as_raw_fd(), &req) }.map_err(|e| io::Error::other(format!("its netmask: {e}")))?;
    Ok(())
}

/// Adds the default route through `gateway` (SIOCADDRT).
pub fn add_default_route(gateway: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket()?;
    // SAFETY: rtentry is plain old data (integers, sockaddrs and a device-name pointer that
    // null leaves unset); all-zero is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr_v4(gateway);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads the rtentry we own.
    unsafe { siocaddrt(sock.as_raw_fd(), &route) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_sockaddr_is_laid_out_as_a_sockaddr_in() {
        let sa = sockaddr_v4(Ipv4Addr::new(10, 0, 2, 15));
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::new(10, 0, 2, 15)).to_be() },
            sin_zero: [0; 8],
        };
        assert_eq!(size_of::<libc::sockaddr>(), size_of::<libc::sockaddr_in>());
        // SAFETY: both are plain old data of the same size (checked above), read as bytes.
        let bytes = |p: *const u8| unsafe { std::slice::from_raw_parts(p, size_of::<libc::sockaddr>()) }.to_vec();
        assert_eq!(bytes((&raw const sa).cast()), bytes((&raw const sin).cast()));
    }
}
