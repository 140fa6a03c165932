//! A small DHCPv4 client (DISCOVER → OFFER → REQUEST → ACK) on a UDP socket bound to
//! one interface. The broadcast flag asks servers to broadcast their answers, which
//! reach an interface that has no address yet.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use socket2::{Domain, Protocol, Socket, Type};

/// What the server gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length from the subnet mask (24 if the server sent none).
    pub prefix: u8,
    /// The first router.
    pub gateway: Option<Ipv4Addr>,
    /// Name servers.
    pub dns: Vec<Ipv4Addr>,
    /// The server that answered.
    pub server: Ipv4Addr,
    /// Lease time in seconds, if given.
    pub lease_secs: Option<u32>,
}

fn socket(iface: &str) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    Ok(s.into())
}

fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect()
}

fn request(
    kind: MessageType,
    xid: u32,
    mac: &[u8],
    offer: Option<(Ipv4Addr, Ipv4Addr)>,
) -> Message {
    let mut msg = Message::default();
    msg.set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(mac);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::AddressLeaseTime,
    ]));
    opts.insert(DhcpOption::Hostname("ferry-ramdisk".into()));
    if let Some((ip, server)) = offer {
        opts.insert(DhcpOption::RequestedIpAddress(ip));
        opts.insert(DhcpOption::ServerIdentifier(server));
    }
    msg
}

fn message_type(msg: &Message) -> Option<MessageType> {
    match msg.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(t)) => Some(*t),
        _ => None,
    }
}

/// Waits for an answer of one of `kinds` to `xid`.
fn await_reply(
    sock: &UdpSocket,
    xid: u32,
    kinds: &[MessageType],
    wait: Duration,
) -> io::Result<Option<Message>> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        let n = match sock.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let Ok(msg) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        if msg.xid() == xid && message_type(&msg).is_some_and(|t| kinds.contains(&t)) {
            return Ok(Some(msg));
        }
    }
}

fn send(sock: &UdpSocket, msg: &Message) -> io::Result<()> {
    let mut buf = Vec::with_capacity(548);
    msg.encode(&mut Encoder::new(&mut buf))
        .map_err(io::Error::other)?;
    sock.send_to(&buf, SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))?;
    Ok(())
}

/// Asks for a lease on `iface` (whose hardware address is `mac`), trying for about
/// `total` before giving up.
pub fn obtain(iface: &str, mac: &str, total: Duration) -> io::Result<Lease> {
    let sock = socket(iface)?;
    let mac = mac_bytes(mac);
    let deadline = Instant::now() + total;
    // Early frames after link-up are often lost: ask again soon, then back off.
    let mut wait = Duration::from_millis(250);
    while Instant::now() < deadline {
        let xid = super::sys::quick_random_u32();
        send(&sock, &request(MessageType::Discover, xid, &mac, None))?;
        let Some(offer) = await_reply(&sock, xid, &[MessageType::Offer], wait)? else {
            wait = (wait * 2).min(Duration::from_secs(4));
            continue;
        };
        let server = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => offer.siaddr(),
        };
        send(
            &sock,
            &request(
                MessageType::Request,
                xid,
                &mac,
                Some((offer.yiaddr(), server)),
            ),
        )?;
        match await_reply(&sock, xid, &[MessageType::Ack, MessageType::Nak], wait)? {
            Some(ack) if message_type(&ack) == Some(MessageType::Ack) => {
                return Ok(lease(&ack, server));
            }
            _ => continue,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "no DHCP server answered on {iface} within {} s",
            total.as_secs()
        ),
    ))
}

fn lease(ack: &Message, server: Ipv4Addr) -> Lease {
    let opts = ack.opts();
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).count_ones() as u8,
        _ => 24,
    };
    let gateway = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(t)) => Some(*t),
        _ => None,
    };
    Lease {
        address: ack.yiaddr(),
        prefix,
        gateway,
        dns,
        server,
        lease_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_leases_read_back() {
        let mac = mac_bytes("52:54:00:12:34:56");
        assert_eq!(mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let msg = request(
            MessageType::Request,
            7,
            &mac,
            Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
        );
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        let back = Message::decode(&mut Decoder::new(&buf)).unwrap();
        assert_eq!(back.xid(), 7);
        assert!(back.flags().broadcast());
        assert_eq!(message_type(&back), Some(MessageType::Request));

        let mut ack = Message::default();
        ack.set_xid(7).set_yiaddr(Ipv4Addr::new(10, 0, 2, 15));
        ack.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        ack.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        ack.opts_mut()
            .insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]));
        ack.opts_mut()
            .insert(DhcpOption::DomainNameServer(vec![Ipv4Addr::new(
                10, 0, 2, 3,
            )]));
        let l = lease(&ack, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(l.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.prefix, 24);
        assert_eq!(l.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(l.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
    }
}
