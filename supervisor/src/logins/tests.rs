use super::*;

fn limits(max: u32) -> Logins {
    Logins {
        block_after_failures: max,
        failure_window_seconds: 60,
        block_seconds: 300,
        ..Logins::default()
    }
}

fn ip(text: &str) -> Source {
    Source::of(text.parse().unwrap())
}

fn fail(g: &mut Guard, source: Source, now: u64) -> Option<Block> {
    g.report(source, false, false, "imap", now)
}

#[test]
fn the_nth_failure_within_the_window_blocks_that_address_only() {
    let mut g = Guard::new(limits(3));
    let attacker = ip("10.0.0.9");
    let other = ip("10.0.0.10");
    assert_eq!(fail(&mut g, attacker, 100), None);
    assert_eq!(fail(&mut g, attacker, 110), None);
    assert_eq!(g.allow(attacker, 111), Verdict::Allow);
    let block = fail(&mut g, attacker, 120).expect("the third failure blocks");
    assert_eq!(
        block,
        Block {
            address: "10.0.0.9".into(),
            failures: 3,
            since: 120,
            until: 420,
            protocol: "imap".into()
        }
    );
    assert_eq!(
        g.allow(attacker, 121),
        Verdict::Refuse(
            "too many failed logins from 10.0.0.9; blocked for 299 more seconds".into()
        )
    );
    assert_eq!(g.allow(other, 121), Verdict::Allow);
    assert_eq!(g.blocks(121), vec![block]);
    // The block runs its time, then the address starts from nothing.
    assert_eq!(g.allow(attacker, 420), Verdict::Allow);
    assert!(g.blocks(420).is_empty());
    assert_eq!(fail(&mut g, attacker, 421), None);
    assert_eq!(fail(&mut g, attacker, 422), None);
}

#[test]
fn failures_older_than_the_window_do_not_count() {
    let mut g = Guard::new(limits(3));
    let a = ip("192.0.2.1");
    fail(&mut g, a, 0);
    fail(&mut g, a, 30);
    // The first one is 60 s old: out of the window.
    assert_eq!(fail(&mut g, a, 60), None);
    assert!(fail(&mut g, a, 61).is_some());
}

#[test]
fn successes_and_refusals_do_not_count_and_do_not_reset() {
    let mut g = Guard::new(limits(3));
    let a = ip("192.0.2.1");
    fail(&mut g, a, 1);
    fail(&mut g, a, 2);
    // One known password buys no more guesses at the others.
    assert_eq!(g.report(a, true, false, "imap", 3), None);
    assert!(fail(&mut g, a, 4).is_some());
    // What the policy refused while blocked neither extends the block nor counts.
    assert_eq!(g.report(a, false, true, "imap", 5), None);
    assert_eq!(fail(&mut g, a, 6), None);
    assert_eq!(g.blocks(6)[0].until, 304);
}

#[test]
fn zero_blocks_nobody() {
    let mut g = Guard::new(limits(0));
    let a = ip("192.0.2.1");
    for t in 0..100 {
        assert_eq!(fail(&mut g, a, t), None);
    }
    assert_eq!(g.allow(a, 100), Verdict::Allow);
}

#[test]
fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
    let mut g = Guard::new(limits(2));
    fail(&mut g, ip("2001:db8:1:2::1"), 1);
    let block = fail(&mut g, ip("2001:db8:1:2:ffff::9"), 2).expect("same /64");
    assert_eq!(block.address, "2001:db8:1:2::/64");
    assert!(matches!(
        g.allow(ip("2001:db8:1:2::77"), 3),
        Verdict::Refuse(_)
    ));
    assert_eq!(g.allow(ip("2001:db8:1:3::1"), 3), Verdict::Allow);
    assert_eq!(ip("::ffff:192.0.2.7"), ip("192.0.2.7"));
}

#[test]
fn lift_lets_the_address_in_and_forgets_its_failures() {
    let mut g = Guard::new(limits(2));
    let a = ip("192.0.2.1");
    fail(&mut g, a, 1);
    fail(&mut g, a, 2);
    assert!(g.lift(Source::parse(" 192.0.2.1 ").unwrap(), 3));
    assert_eq!(g.allow(a, 3), Verdict::Allow);
    assert_eq!(fail(&mut g, a, 4), None, "its failures were forgotten");
    assert!(!g.lift(ip("192.0.2.99"), 5), "nothing to lift");
    assert_eq!(
        Source::parse("2001:db8::5/64").unwrap().to_string(),
        "2001:db8::/64"
    );
    assert_eq!(
        Source::parse("mail.example.org").unwrap_err(),
        NotAnAddress("mail.example.org".into())
    );
    assert_eq!(
        NotAnAddress("mail.example.org\n".into()).to_string(),
        "`mail.example.org\\n` is not an IP address (like 192.0.2.7 or 2001:db8::1)",
        "control characters are shown escaped"
    );
}

#[test]
fn a_spread_out_attack_cannot_grow_the_table_without_bound() {
    let mut g = Guard::new(limits(1000));
    for i in 0..(MAX_TRACKED as u32 + 50) {
        let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        fail(&mut g, Source::of(addr), 1);
    }
    assert!(g.entries.len() <= MAX_TRACKED);
    // Once their failures are out of the window they make room.
    fail(&mut g, ip("192.0.2.1"), 1000);
    assert!(g.entries.contains_key(&ip("192.0.2.1")));
    assert_eq!(g.entries.len(), 1);
}

fn exchange(g: &mut Guard, command: &str, body: &str, now: u64) -> (StatusCode, String) {
    respond(
        g,
        &Method::POST,
        Some(&format!("command={command}")),
        body.as_bytes(),
        now,
    )
}

#[test]
fn dovecots_protocol_allow_and_report() {
    let mut g = Guard::new(limits(2));
    let ask = r#"{"remote":"198.51.100.4","protocol":"imap"}"#;
    let failed =
        r#"{"remote":"198.51.100.4","protocol":"smtp","success":false,"policy_reject":false}"#;
    assert_eq!(
        exchange(&mut g, "allow", ask, 1),
        (StatusCode::OK, r#"{"status":0}"#.into())
    );
    assert_eq!(
        exchange(&mut g, "report", failed, 1),
        (StatusCode::OK, "{}".into())
    );
    assert_eq!(
        exchange(&mut g, "report", failed, 2),
        (StatusCode::OK, "{}".into())
    );
    let (code, body) = exchange(&mut g, "allow", ask, 3);
    assert_eq!(code, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], -1, "{body}");
    assert!(
        answer["msg"].as_str().unwrap().contains("198.51.100.4"),
        "{body}"
    );
    assert_eq!(g.blocks(3)[0].protocol, "smtp");
    // dovecot's URL may carry its own query before the command.
    assert_eq!(
        respond(
            &mut g,
            &Method::POST,
            Some("x=1&command=allow"),
            ask.as_bytes(),
            3
        )
        .1,
        body
    );
}

#[test]
fn what_cannot_be_judged_is_allowed_or_refused_as_a_request_never_counted() {
    let mut g = Guard::new(limits(1));
    // No remote address (doveadm auth test on the host): allowed, nothing counted.
    assert_eq!(
        exchange(&mut g, "allow", r#"{"remote":"","protocol":"doveadm"}"#, 1).1,
        r#"{"status":0}"#
    );
    exchange(&mut g, "report", r#"{"remote":"","success":false}"#, 1);
    assert!(g.entries.is_empty());
    assert_eq!(
        exchange(&mut g, "allow", "not json", 1).0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        exchange(&mut g, "delete", "{}", 1).0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        respond(&mut g, &Method::GET, Some("command=allow"), b"{}", 1).0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert!(g.entries.is_empty());
}

/// /proc/self/net/tcp with a listener on 127.0.0.1:10041 (0x2739), dovecot's (uid
/// 107) connection from port 39404 (0x99EC), the accepted end (postmaster, uid
/// 998), and an old connection from port 53474 (0xD0E2) in TIME_WAIT.
#[cfg(target_endian = "little")]
const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2739 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 124144 1 000000001f1af133 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 637 1 000000006883de17 100 0 0 10 0
   2: 0100007F:2739 0100007F:99EC 01 00000000:00000000 00:00000000 00000000   998        0 124146 1 0000000097e20286 20 0 0 10 -1
   3: 0100007F:99EC 0100007F:2739 01 00000000:00000000 00:00000000 00000000   107        0 124145 2 00000000b848278a 20 0 0 10 -1
   4: 0100007F:D0E2 0100007F:2739 06 00000000:00000000 03:00001578 00000000     0        0 0 3 00000000f669e09f
";

#[cfg(target_endian = "little")]
#[test]
fn the_owner_of_a_policy_connection_is_read_from_the_kernels_socket_table() {
    let server: SocketAddr = "127.0.0.1:10041".parse().unwrap();
    let client: SocketAddr = "127.0.0.1:39404".parse().unwrap();
    assert_eq!(socket_owner(TCP, client, server), Some(107));
    // The other end of the same connection is postmaster's own socket.
    assert_eq!(socket_owner(TCP, server, client), Some(998));
    // A closed connection's TIME_WAIT entry says uid 0: it is not an owner.
    let gone: SocketAddr = "127.0.0.1:53474".parse().unwrap();
    assert_eq!(socket_owner(TCP, gone, server), None);
    assert_eq!(
        socket_owner(TCP, "127.0.0.1:1".parse().unwrap(), server),
        None
    );
    assert_eq!(socket_owner("", client, server), None);
}

#[cfg(target_endian = "little")]
#[test]
fn ipv6_connections_are_found_in_tcp6() {
    // [::1]:10041 <- [::1]:37076 (0x90D4), as /proc/self/net/tcp6 prints them.
    let table = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:90D4 00000000000000000000000001000000:2739 01 00000000:00000000 00:00000000 00000000   107        0 5 1 0 20 0 0 10 -1
";
    let server: SocketAddr = "[::1]:10041".parse().unwrap();
    let client: SocketAddr = "[::1]:37076".parse().unwrap();
    assert_eq!(socket_owner(table, client, server), Some(107));
}

#[test]
fn root_and_the_policy_clients_are_answered_nobody_else() {
    let mut g = Guard::new(limits(3));
    assert!(g.answers(0));
    assert!(!g.answers(107));
    g.set_client_uids(vec![107]);
    assert!(g.answers(107));
    assert!(!g.answers(1000));
}

#[test]
fn why_failed_logins_are_not_limited_reads_as_before() {
    let taken = NotLimited::CannotListen {
        address: "127.0.0.1:12346".parse().unwrap(),
        source: std::io::Error::from_raw_os_error(98),
    };
    assert_eq!(
        taken.to_string(),
        "cannot listen on 127.0.0.1:12346 for dovecot's auth policy requests (Address already in use (os error 98)); failed logins are not limited"
    );
    let unknown = NotLimited::UnknownClients {
        names: vec!["`dovecot`".into(), "`dovenull`".into()],
    };
    assert_eq!(
        unknown.to_string(),
        "[logins] policy_clients: no user `dovecot`, `dovenull` on this host: dovecot's auth policy requests are refused, so failed logins are not limited"
    );
}
