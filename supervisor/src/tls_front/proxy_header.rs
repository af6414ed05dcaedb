//! The PROXY protocol version 2 header the TLS front puts before each connection
//! to dovecot (haproxy's proxy-protocol.txt, section 2.2): the client's address and
//! port, the address and port it connected to, and that the client spoke TLS.
//!
//! dovecot takes it on listeners with `haproxy = yes` from `haproxy_trusted_networks`
//! (loopback), logs and judges logins by the client's address (the brute-force
//! policy included), and counts the connection as TLS-secured when the SSL TLV says
//! PP2_CLIENT_SSL (login-common/client-common.c, 2.3 and 2.4): so passwords are taken
//! only from clients that really spoke TLS to the front.

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;

/// The TLS session the client has with the front, as dovecot's log may show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tls {
    /// "TLSv1.3", as OpenSSL names versions (what haproxy sends).
    pub(crate) version: String,
    /// The IANA name of the cipher suite.
    pub(crate) cipher: String,
}

/// The header for a client at `client` that connected to `local`, over `tls`
/// (`None`: a connection of the front's own that claims no TLS, and so is not
/// secured in dovecot's eyes).
/// An IPv4 client on a dual-stack socket (`::ffff:a.b.c.d`) is sent as IPv4, so
/// that dovecot logs and judges the address the client has.
pub(crate) fn header(client: SocketAddr, local: SocketAddr, tls: Option<&Tls>) -> Vec<u8> {
    let (client_ip, local_ip) = (unmapped(client.ip()), unmapped(local.ip()));
    let mut addresses = Vec::with_capacity(36);
    let family = match (client_ip, local_ip) {
        (IpAddr::V4(c), IpAddr::V4(l)) => {
            addresses.extend_from_slice(&c.octets());
            addresses.extend_from_slice(&l.octets());
            TCP_OVER_IPV4
        }
        (c, l) => {
            addresses.extend_from_slice(&v6(c).octets());
            addresses.extend_from_slice(&v6(l).octets());
            TCP_OVER_IPV6
        }
    };
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&local.port().to_be_bytes());

    // The SSL TLV: client flags, verify (0: as haproxy sends it when no client
    // certificate was asked for), then sub-TLVs.
    let mut tlvs = Vec::new();
    if let Some(tls) = tls {
        let mut ssl = vec![PP2_CLIENT_SSL, 0, 0, 0, 0];
        tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, short(&tls.version));
        tlv(&mut ssl, PP2_SUBTYPE_SSL_CIPHER, short(&tls.cipher));
        tlv(&mut tlvs, PP2_TYPE_SSL, &ssl);
    }

    let length = u16::try_from(addresses.len() + tlvs.len())
        .expect("two addresses and two short names fit in a u16");
    let mut out = Vec::with_capacity(16 + usize::from(length));
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    out.push(family);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&addresses);
    out.extend_from_slice(&tlvs);
    out
}

/// A name as it goes into a sub-TLV: a version or a suite name, far shorter than
/// this; cut rather than let the header grow.
fn short(name: &str) -> &[u8] {
    &name.as_bytes()[..name.len().min(255)]
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(
        &u16::try_from(value.len())
            .expect("a TLV holds at most two short names")
            .to_be_bytes(),
    );
    out.extend_from_slice(value);
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls13() -> Tls {
        Tls {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
        }
    }

    #[test]
    fn an_ipv4_client_byte_for_byte() {
        let h = header(
            "192.0.2.7:51000".parse().unwrap(),
            "198.51.100.1:993".parse().unwrap(),
            Some(&tls13()),
        );
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
        // 12 address bytes + SSL TLV (3 + 5 + (3 + 7) + (3 + 24)).
        expected.extend_from_slice(&(12u16 + 45).to_be_bytes());
        expected.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
        expected.extend_from_slice(&51000u16.to_be_bytes());
        expected.extend_from_slice(&993u16.to_be_bytes());
        expected.extend_from_slice(&[0x20, 0, 42, 0x01, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0x21, 0, 7]);
        expected.extend_from_slice(b"TLSv1.3");
        expected.extend_from_slice(&[0x23, 0, 24]);
        expected.extend_from_slice(b"TLS13_AES_256_GCM_SHA384");
        assert_eq!(h, expected);
    }

    #[test]
    fn an_ipv4_client_on_a_dual_stack_socket_is_sent_as_ipv4() {
        let mapped = header(
            "[::ffff:192.0.2.7]:51000".parse().unwrap(),
            "[::ffff:198.51.100.1]:993".parse().unwrap(),
            Some(&tls13()),
        );
        let plain = header(
            "192.0.2.7:51000".parse().unwrap(),
            "198.51.100.1:993".parse().unwrap(),
            Some(&tls13()),
        );
        assert_eq!(mapped, plain);
    }

    #[test]
    fn an_ipv6_client() {
        let h = header(
            "[2001:db8::7]:51000".parse().unwrap(),
            "[2001:db8::1]:143".parse().unwrap(),
            Some(&tls13()),
        );
        assert_eq!(h[13], TCP_OVER_IPV6);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36 + 45);
        assert_eq!(
            &h[16..32],
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&h[48..50], &51000u16.to_be_bytes());
        assert_eq!(&h[50..52], &143u16.to_be_bytes());
        assert_eq!(h.len(), 16 + 36 + 45);
    }

    #[test]
    fn without_tls_there_is_no_ssl_tlv() {
        let h = header(
            "192.0.2.7:51000".parse().unwrap(),
            "198.51.100.1:4190".parse().unwrap(),
            None,
        );
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(h.len(), 16 + 12);
    }
}
