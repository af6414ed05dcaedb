use super::*;

const LHLO_REPLY: &[u8] = b"250-mail.example.org\r\n250-8BITMIME\r\n250-CHUNKING\r\n\
250-ENHANCEDSTATUSCODES\r\n250-SIZE\r\n250 PIPELINING\r\n";
const RCPT: &[u8] = b"RCPT TO:<thomas@example.org>\r\n";
const CUT: &[u8] = b"451 4.3.0 <thomas@example.org> Temporary internal error\r\n";
const OK: &[u8] = b"250 2.1.5 OK\r\n";

/// What the actions send to dovecot (`to_server`) or to postfix, end to end.
fn sent(actions: &[Action], to_server: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    for action in actions {
        match (action, to_server) {
            (Action::ToServer(b), true) | (Action::ToClient(b), false) => bytes.extend(b),
            _ => {}
        }
    }
    bytes
}

fn to_server(actions: &[Action]) -> Vec<u8> {
    sent(actions, true)
}

fn to_client(actions: &[Action]) -> Vec<u8> {
    sent(actions, false)
}

fn pauses(actions: &[Action]) -> Vec<Duration> {
    let mut each = Vec::new();
    for action in actions {
        if let Action::Pause(d) = action {
            each.push(*d);
        }
    }
    each
}

/// dovecot's `reply` reaches postfix as it is, and nothing else happens.
fn passes(d: &mut Dialogue, reply: &[u8]) {
    assert_eq!(d.server_sent(reply), [Action::ToClient(reply.to_vec())]);
}

/// dovecot's `reply` reaches postfix, and postfix's `next` command, held back until
/// then, goes to dovecot.
fn reply_releases(d: &mut Dialogue, reply: &[u8], next: &[u8]) {
    assert_eq!(
        d.server_sent(reply),
        [
            Action::ToClient(reply.to_vec()),
            Action::ToServer(next.to_vec())
        ]
    );
}

/// A dialogue past LHLO and MAIL, in a transaction with no recipient yet.
fn in_transaction() -> Dialogue {
    let mut d = Dialogue::new();
    assert_eq!(
        to_server(&d.client_sent(b"LHLO postfix\r\n")),
        b"LHLO postfix\r\n"
    );
    d.server_sent(LHLO_REPLY);
    let mail = b"MAIL FROM:<a@elsewhere.example> BODY=8BITMIME\r\n";
    assert_eq!(to_server(&d.client_sent(mail)), mail);
    passes(&mut d, b"250 2.1.0 OK\r\n");
    d
}

/// `in_transaction` with `n` recipients accepted.
fn with_recipients(n: usize) -> Dialogue {
    let mut d = in_transaction();
    for i in 0..n {
        let line = format!("RCPT TO:<r{i}@example.org>\r\n");
        assert_eq!(to_server(&d.client_sent(line.as_bytes())), line.as_bytes());
        passes(&mut d, OK);
    }
    d
}

/// `with_recipients(n)` after DATA's 354: in the message.
fn in_message(n: usize) -> Dialogue {
    let mut d = with_recipients(n);
    assert_eq!(to_server(&d.client_sent(b"DATA\r\n")), b"DATA\r\n");
    let go = b"354 OK\r\n";
    passes(&mut d, go);
    d
}

#[test]
fn one_command_at_a_time_even_when_postfix_sends_more() {
    let mut d = Dialogue::new();
    // A command line in pieces goes on once complete.
    assert_eq!(d.client_sent(b"LHLO post"), []);
    assert_eq!(to_server(&d.client_sent(b"fix\r\n")), b"LHLO postfix\r\n");
    d.server_sent(LHLO_REPLY);
    // Three commands at once: the second waits for the first's reply, the third for
    // the second's.
    let actions = d.client_sent(b"MAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nNOOP\r\n");
    assert_eq!(actions, [Action::ToServer(b"MAIL FROM:<>\r\n".to_vec())]);
    reply_releases(&mut d, b"250 2.1.0 OK\r\n", b"RCPT TO:<a@example.org>\r\n");
    reply_releases(&mut d, OK, b"NOOP\r\n");
    passes(&mut d, b"250 2.0.0 OK\r\n");
    assert!(!d.is_raw());
}

#[test]
fn lhlo_hides_pipelining_and_chunking_and_keeps_the_rest() {
    let mut d = Dialogue::new();
    d.client_sent(b"LHLO postfix\r\n");
    assert_eq!(
        to_client(&d.server_sent(LHLO_REPLY)),
        b"250-mail.example.org\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 SIZE\r\n"
    );
    // In the middle, in any case, with parameters, BINARYMIME too; the first line is
    // dovecot's name even if it reads like an extension.
    assert_eq!(
        without_hidden(
            b"250-PIPELINING\r\n250-pipelining\r\n250-Chunking x\r\n250-BINARYMIME\r\n\
              250-DSN\r\n250 XCLIENT ADDR\r\n"
        ),
        b"250-PIPELINING\r\n250-DSN\r\n250 XCLIENT ADDR\r\n"
    );
    assert_eq!(without_hidden(b"250 one\r\n"), b"250 one\r\n");
    assert_eq!(
        without_hidden(b"250-one\r\n250 CHUNKING\r\n"),
        b"250 one\r\n"
    );
    // A refusal passes as it is.
    let mut d = Dialogue::new();
    d.client_sent(b"LHLO\r\n");
    let refused = b"501-5.5.4 Missing\r\n501 5.5.4 domain\r\n";
    passes(&mut d, refused);
}

#[test]
fn a_multiline_reply_passes_whole_once_complete() {
    let mut d = in_transaction();
    d.client_sent(RCPT);
    let reply = b"250-2.1.5 first\r\n250-second\r\n250 2.1.5 last\r\n";
    for (i, b) in reply.iter().enumerate() {
        let actions = d.server_sent(&[*b]);
        if i + 1 < reply.len() {
            assert_eq!(actions, [], "{i}");
        } else {
            assert_eq!(actions, [Action::ToClient(reply.to_vec())]);
        }
    }
}

#[test]
fn a_rcpt_cut_at_a_reload_is_sent_again_and_postfix_sees_only_the_acceptance() {
    let mut d = in_transaction();
    assert_eq!(to_server(&d.client_sent(RCPT)), RCPT);
    // The 451 is held back; a pause is asked for.
    assert_eq!(
        d.server_sent(CUT),
        [Action::Pause(Duration::from_millis(100))]
    );
    // Nothing of postfix's goes on meanwhile.
    assert_eq!(d.client_sent(b"DATA\r\n"), []);
    assert_eq!(
        d.resume(),
        [
            Action::Resent {
                try_no: 2,
                reply: "451 4.3.0 <thomas@example.org> Temporary internal error".into()
            },
            Action::ToServer(RCPT.to_vec()),
        ]
    );
    assert_eq!(
        d.server_sent(OK),
        [
            Action::Saved { try_no: 2 },
            Action::ToClient(OK.to_vec()),
            Action::ToServer(b"DATA\r\n".to_vec()),
        ]
    );
    // The recipient counts: the message gets its one reply.
    d.server_sent(b"354 OK\r\n");
    assert_eq!(to_server(&d.client_sent(b"x\r\n.\r\n")), b"x\r\n.\r\n");
    passes(&mut d, b"250 2.0.0 saved\r\n");
    assert!(!d.is_raw());
}

#[test]
fn after_the_last_try_postfix_gets_dovecots_last_reply() {
    let mut d = in_transaction();
    d.client_sent(RCPT);
    let mut waited = Vec::new();
    for i in 1..=3 {
        let reply = format!("451 4.3.0 cut {i}\r\n");
        let actions = d.server_sent(reply.as_bytes());
        assert_eq!(to_client(&actions), b"", "{i}");
        waited.extend(pauses(&actions));
        assert_eq!(to_server(&d.resume()), RCPT);
    }
    assert_eq!(waited, RCPT_PAUSES);
    assert!(waited.iter().sum::<Duration>() <= Duration::from_secs(1));
    let last = b"451 4.3.0 cut 4\r\n";
    assert_eq!(
        d.server_sent(last),
        [
            Action::GaveUp {
                tries: 4,
                reply: "451 4.3.0 cut 4".into()
            },
            Action::ToClient(last.to_vec()),
        ]
    );
    // A resume that comes late does nothing.
    assert_eq!(d.resume(), []);
    // Still followed: the next RCPT is a first try again.
    d.client_sent(RCPT);
    assert_eq!(pauses(&d.server_sent(CUT)), [RCPT_PAUSES[0]]);
}

#[test]
fn only_451_with_4_3_0_is_tried_again() {
    for reply in [
        "550 5.1.1 <x@example.org> User doesn't exist: x@example.org\r\n",
        "554 5.3.0 internal, but final\r\n",
        "452 4.5.3 Too many recipients\r\n",
        "452 4.2.2 <x@example.org> Quota exceeded (mailbox for user is full)\r\n",
        "450 4.2.0 Mailbox busy\r\n",
        "451 4.4.0 Remote server not answering\r\n",
        "451 4.7.0 policy\r\n",
        "451 Temporary internal error\r\n",
        "421 4.3.2 Server shutting down\r\n",
        "451 4.3.01 not quite\r\n",
    ] {
        assert!(!internal_error(reply.as_bytes()), "{reply}");
        let mut d = in_transaction();
        d.client_sent(RCPT);
        assert_eq!(
            d.server_sent(reply.as_bytes()),
            [Action::ToClient(reply.as_bytes().to_vec())],
            "{reply}"
        );
    }
    for reply in [
        CUT,
        b"451 4.3.0 <x@example.org> Too many concurrent deliveries for user\r\n",
        b"451-4.3.0 first\r\n451 4.3.0 second\r\n",
    ] {
        assert!(internal_error(reply), "{}", text(reply));
    }
}

#[test]
fn the_message_passes_unchanged_whatever_its_lines_look_like() {
    let mut d = in_message(2);
    // Commands, replies, a lone CR and LF, a dot not alone: all content.
    let message = b"Subject: RCPT TO:<x@example.org>\r\n\r\nRCPT TO:<y@example.org>\r\n\
451 4.3.0 <y> Temporary internal error\r\nQUIT\r\n.x\r\n a\rb\nc\r\n\n.\n";
    for chunk in message.chunks(7) {
        assert_eq!(d.client_sent(chunk), [Action::ToServer(chunk.to_vec())]);
    }
    // The end, then postfix's next command at once: held back until both
    // recipients' replies passed.
    let actions = d.client_sent(b"\r\n.\r\nRSET\r\n");
    assert_eq!(actions, [Action::ToServer(b"\r\n.\r\n".to_vec())]);
    let first = b"250 2.0.0 <r0@example.org> saved\r\n";
    assert_eq!(d.server_sent(first), [Action::ToClient(first.to_vec())]);
    // A 451 here is the message's, for one recipient: never sent again.
    let second = b"451 4.3.0 <r1@example.org> Temporary internal error\r\n";
    reply_releases(&mut d, second, b"RSET\r\n");
    passes(&mut d, b"250 2.0.0 OK\r\n");
    assert!(!d.is_raw());
}

#[test]
fn a_stuffed_dot_is_content_and_only_a_lone_dot_between_crlfs_ends_the_message() {
    for (content, ends_at) in [
        (b"..\r\n.\r\n".as_slice(), 7),
        (b"..foo\r\n.\r\n", 10),
        (b".\r\n", 3),
        (b"\r\n.\r\n", 5),
        (b".x\r\n.\r\n", 7),
        (b"a\n.\r\n.\r\n", 8),
        (b"a\r\n.\n\r\n.\r\n", 10),
        (b"a\r\n..\r\n\r\n.\r\ntail", 12),
    ] {
        // Whole, and a byte at a time: the end found at the same byte.
        let mut d = in_message(1);
        let actions = d.client_sent(content);
        assert_eq!(to_server(&actions), &content[..ends_at], "{content:?}");
        let mut d = in_message(1);
        let mut sent = Vec::new();
        for b in content {
            sent.extend(to_server(&d.client_sent(&[*b])));
        }
        assert_eq!(sent, &content[..ends_at], "{content:?}");
        assert!(
            matches!(d.phase, Phase::DataReplies(1)),
            "{content:?}: {:?}",
            d.phase
        );
    }
}

#[test]
fn long_lines_stream_through_without_being_held() {
    let mut d = in_message(1);
    // 4 MiB on one line, in 64 KiB reads: nothing is kept between reads.
    let chunk = vec![b'a'; 65536];
    for _ in 0..64 {
        assert_eq!(d.client_sent(&chunk), [Action::ToServer(chunk.clone())]);
        assert!(d.client.is_empty());
    }
    assert_eq!(to_server(&d.client_sent(b"\r\n.\r\n")), b"\r\n.\r\n");
    passes(&mut d, OK);
    // A command line is not a message line: one past the limit is not followed.
    let mut d = Dialogue::new();
    let long = [b"NOOP ".as_slice(), &vec![b'x'; COMMAND_LIMIT]].concat();
    let actions = d.client_sent(&long);
    assert!(d.is_raw());
    assert_eq!(to_server(&actions), long);
}

#[test]
fn what_it_does_not_follow_passes_unchanged_from_then_on() {
    let mut d = in_transaction();
    let actions = d.client_sent(b"BDAT 10 LAST\r\n0123456789");
    assert_eq!(
        actions,
        [
            Action::Unfollowed("postfix sent \"BDAT\"".into()),
            Action::ToServer(b"BDAT 10 LAST\r\n0123456789".to_vec()),
        ]
    );
    assert!(d.is_raw());
    // No RCPT is sent again, no LHLO reply is changed, nothing is held.
    assert_eq!(d.client_sent(RCPT), [Action::ToServer(RCPT.to_vec())]);
    assert_eq!(d.server_sent(CUT), [Action::ToClient(CUT.to_vec())]);
    assert_eq!(
        d.server_sent(LHLO_REPLY),
        [Action::ToClient(LHLO_REPLY.to_vec())]
    );

    // STARTTLS: what follows is TLS.
    let mut d = Dialogue::new();
    let actions = d.client_sent(b"STARTTLS\r\n");
    assert!(d.is_raw());
    assert_eq!(to_server(&actions), b"STARTTLS\r\n");

    // dovecot speaking unasked (an idle timeout, say).
    let mut d = in_transaction();
    let bye = b"421 4.4.2 Disconnected for inactivity\r\n";
    let actions = d.server_sent(bye);
    assert!(d.is_raw());
    assert_eq!(to_client(&actions), bye);

    // Not a reply.
    let mut d = in_transaction();
    d.client_sent(RCPT);
    let actions = d.server_sent(b"HTTP/1.1 200 OK\r\n");
    assert!(d.is_raw());
    assert_eq!(to_client(&actions), b"HTTP/1.1 200 OK\r\n");
}

#[test]
fn a_held_reply_reaches_postfix_when_following_stops() {
    // dovecot speaks during the pause: postfix gets the held 451 first.
    let mut d = in_transaction();
    d.client_sent(RCPT);
    d.server_sent(CUT);
    let bye = b"421 4.3.2 Server shutting down\r\n";
    let actions = d.server_sent(bye);
    assert!(d.is_raw());
    assert_eq!(to_client(&actions), [CUT, bye].concat());
    assert_eq!(d.resume(), []);
    // A side closes during the pause: the same, and what postfix sent goes on.
    let mut d = in_transaction();
    d.client_sent(RCPT);
    d.server_sent(CUT);
    d.client_sent(b"QUIT\r\n");
    let actions = d.stop();
    assert_eq!(to_client(&actions), CUT);
    assert_eq!(to_server(&actions), b"QUIT\r\n");
    assert!(d.is_raw());
}

#[test]
fn a_new_transaction_counts_its_recipients_from_zero() {
    let mut d = with_recipients(2);
    d.client_sent(b"RSET\r\n");
    d.server_sent(b"250 2.0.0 OK\r\n");
    d.client_sent(b"MAIL FROM:<>\r\n");
    d.server_sent(b"250 2.1.0 OK\r\n");
    d.client_sent(RCPT);
    d.server_sent(OK);
    // A refused recipient does not count.
    d.client_sent(b"RCPT TO:<nobody@example.org>\r\n");
    d.server_sent(b"550 5.1.1 <nobody@example.org> User doesn't exist\r\n");
    d.client_sent(b"DATA\r\n");
    d.server_sent(b"354 OK\r\n");
    d.client_sent(b".\r\nQUIT\r\n");
    // One reply for the one recipient, then QUIT goes.
    reply_releases(&mut d, OK, b"QUIT\r\n");
    // DATA refused: no message follows, commands do.
    let mut d = in_transaction();
    d.client_sent(b"DATA\r\n");
    let refused = b"554 5.5.1 No valid recipients\r\n";
    passes(&mut d, refused);
    assert_eq!(to_server(&d.client_sent(b"QUIT\r\n")), b"QUIT\r\n");
    assert!(!d.is_raw());
}

#[test]
fn a_354_with_no_recipient_seen_stops_following() {
    let mut d = in_transaction();
    d.client_sent(b"DATA\r\n");
    let actions = d.server_sent(b"354 OK\r\n");
    assert_eq!(to_client(&actions), b"354 OK\r\n");
    assert!(d.is_raw());
}

#[test]
fn dovecots_greeting_is_complete_at_its_line_end() {
    let g = b"220 mail.example.org Dovecot (Debian) ready.\r\n";
    assert_eq!(reply(g, REPLY_LIMIT), complete(220, g.len()));
    // Every shorter prefix still needs more.
    for n in 0..g.len() {
        assert_eq!(reply(&g[..n], REPLY_LIMIT), Reply::Incomplete, "{n}");
    }
}

fn complete(code: u16, len: usize) -> Reply {
    Reply::Complete { code, len }
}

#[test]
fn a_multiline_reply_ends_at_its_last_line() {
    let g = b"220-first\r\n220-second\r\n220 last\r\n";
    assert_eq!(reply(&g[..11], REPLY_LIMIT), Reply::Incomplete);
    assert_eq!(reply(&g[..23], REPLY_LIMIT), Reply::Incomplete);
    assert_eq!(reply(g, REPLY_LIMIT), complete(220, g.len()));
    // A bare code, and LF alone, are replies too.
    assert_eq!(reply(b"220\n", REPLY_LIMIT), complete(220, 4));
    // A reply ends where its last line does; what follows is the next one's.
    assert_eq!(reply(b"250 a\r\n250 b\r\n", REPLY_LIMIT), complete(250, 7));
}

#[test]
fn what_is_not_a_reply_is_invalid_as_soon_as_it_shows() {
    assert_eq!(reply(b"HTTP/1.1", REPLY_LIMIT), Reply::Invalid);
    assert_eq!(reply(b"22x", REPLY_LIMIT), Reply::Invalid);
    assert_eq!(reply(b"220x ready\r\n", REPLY_LIMIT), Reply::Invalid);
    assert_eq!(reply(b"220-a\r\n421 b\r\n", REPLY_LIMIT), Reply::Invalid);
    // Too long: with and without a line end.
    let long = [b"220 ".as_slice(), &[b'a'; 100]].concat();
    assert_eq!(reply(&long, 50), Reply::Invalid);
    assert_eq!(
        reply(&[long.as_slice(), b"\r\n"].concat(), 50),
        Reply::Invalid
    );
    assert_eq!(reply(&long, 200), Reply::Incomplete);
}

#[test]
fn a_4xx_reply_is_complete_with_its_code() {
    let g = b"421 4.3.2 Server shutting down\r\n";
    assert_eq!(reply(g, REPLY_LIMIT), complete(421, g.len()));
}
