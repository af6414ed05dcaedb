//! What the TLS front says before STARTTLS on 143 (IMAP), 110 (POP3) and 4190
//! (ManageSieve): pure, a line in and an answer out.
//!
//! Before TLS nothing reaches dovecot: a client may only ask what the server can
//! do, start TLS, or leave. A login is refused as dovecot refuses it on a
//! connection that is not secured (`auth_allow_cleartext = no`), with the same
//! response codes, so clients show the usual "TLS required" message. The
//! capabilities named here are only what a client needs to find STARTTLS; after
//! TLS the client asks again (RFC 3501 6.2.1, RFC 2595 4, RFC 5804 2.2) and
//! dovecot answers with its own.

/// The protocols served on a STARTTLS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Imap,
    Pop3,
    Sieve,
}

/// What to do with a client's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Send this and read the next line.
    Reply(Vec<u8>),
    /// Send this, then expect the TLS handshake.
    StartTls(Vec<u8>),
    /// Send this and close the connection.
    Close(Vec<u8>),
}

/// The longest line taken before TLS. RFC 3501 recommends servers take at least
/// 8000 octets for a command line; none of the few commands allowed here comes near.
pub(crate) const LINE_LIMIT: usize = 8192;

/// Commands taken before TLS: a client that has not started TLS after this many
/// is not going to (it costs a slot; it is told so and closed).
pub(crate) const COMMAND_LIMIT: usize = 50;

const PLAINTEXT_REFUSED: &str =
    "Plaintext authentication disallowed on non-secure (SSL/TLS) connections.";

/// The first lines a client gets. ManageSieve's greeting is its capability list;
/// `sieve_capability` is dovecot's own `"SIEVE" "..."` line (see
/// [`sieve_capabilities`]), so that clients see the same extensions before TLS as
/// after.
pub(crate) fn greeting(protocol: Protocol, sieve_capability: &str) -> Vec<u8> {
    match protocol {
        Protocol::Imap => format!(
            "* OK [CAPABILITY {}] Ready; STARTTLS before logging in.\r\n",
            IMAP_CAPABILITIES
        )
        .into_bytes(),
        Protocol::Pop3 => b"+OK Ready; STLS before logging in.\r\n".to_vec(),
        Protocol::Sieve => sieve_capabilities(
            sieve_capability,
            "OK \"Ready; STARTTLS before logging in.\"",
        ),
    }
}

const IMAP_CAPABILITIES: &str = "IMAP4rev1 ID STARTTLS LOGINDISABLED";

/// ManageSieve's capability response before TLS: no SASL mechanism (none may be
/// used before TLS), STARTTLS, and `last` (the OK line).
fn sieve_capabilities(sieve_capability: &str, last: &str) -> Vec<u8> {
    let sieve = if sieve_capability.is_empty() {
        "\"SIEVE\" \"\""
    } else {
        sieve_capability
    };
    format!(
        "\"IMPLEMENTATION\" \"postmaster\"\r\n{sieve}\r\n\"SASL\" \"\"\r\n\"STARTTLS\"\r\n\"VERSION\" \"1.0\"\r\n{last}\r\n"
    )
    .into_bytes()
}

/// The `"SIEVE" "..."` line of dovecot's ManageSieve greeting, if it has one
/// (the extensions its Sieve interpreter supports).
pub(crate) fn sieve_line(greeting: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(greeting).ok()?;
    text.lines()
        .map(str::trim_end)
        .find(|line| {
            line.get(..8)
                .is_some_and(|start| start.eq_ignore_ascii_case("\"SIEVE\" "))
        })
        // Only a plain quoted string: nothing that could end the line early.
        .filter(|line| line[8..].starts_with('"') && line[8..].ends_with('"'))
        .map(str::to_owned)
}

/// The answer to one line (without its line end) the client sent before TLS.
/// `sieve_capability` as for [`greeting`].
pub(crate) fn answer(protocol: Protocol, line: &[u8], sieve_capability: &str) -> Answer {
    match protocol {
        Protocol::Imap => imap(line),
        Protocol::Pop3 => pop3(line),
        Protocol::Sieve => sieve(line, sieve_capability),
    }
}

/// What a client that sent too long a line, or too many commands, is told as the
/// connection closes.
pub(crate) fn too_much(protocol: Protocol) -> Vec<u8> {
    match protocol {
        Protocol::Imap => b"* BYE Too much before STARTTLS.\r\n".to_vec(),
        Protocol::Pop3 => b"-ERR Too much before STLS.\r\n".to_vec(),
        Protocol::Sieve => b"BYE \"Too much before STARTTLS.\"\r\n".to_vec(),
    }
}

/// What a client is told when dovecot cannot be reached after TLS.
pub(crate) fn unavailable(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"* BYE [UNAVAILABLE] Server not available, try again later.\r\n",
        Protocol::Pop3 => b"-ERR [SYS/TEMP] Server not available, try again later.\r\n",
        Protocol::Sieve => b"BYE (TRYLATER) \"Server not available, try again later.\"\r\n",
    }
}

fn words(line: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.splitn(2, ' ');
    let first = parts.next().unwrap_or("").to_owned();
    let rest = parts.next().unwrap_or("").to_owned();
    (first, rest)
}

/// A tag as RFC 3501 allows it (astring characters but `+`), so that an answer
/// never echoes anything that could end or forge a line.
fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b'+')
        })
}

fn imap(line: &[u8]) -> Answer {
    let (tag, rest) = words(line);
    if !valid_tag(&tag) {
        return Answer::Reply(b"* BAD Error in IMAP command received by server.\r\n".to_vec());
    }
    let (command, _) = words(rest.as_bytes());
    let reply = |text: String| Answer::Reply(text.into_bytes());
    match command.to_ascii_uppercase().as_str() {
        "CAPABILITY" => reply(format!(
            "* CAPABILITY {IMAP_CAPABILITIES}\r\n{tag} OK Pre-login capabilities listed, post-login capabilities have more.\r\n"
        )),
        "NOOP" => reply(format!("{tag} OK NOOP completed.\r\n")),
        "ID" => reply(format!("* ID NIL\r\n{tag} OK ID completed.\r\n")),
        "STARTTLS" => {
            Answer::StartTls(format!("{tag} OK Begin TLS negotiation now.\r\n").into_bytes())
        }
        "LOGOUT" => Answer::Close(
            format!("* BYE Logging out\r\n{tag} OK Logout completed.\r\n").into_bytes(),
        ),
        "LOGIN" | "AUTHENTICATE" => reply(format!(
            "{tag} NO [PRIVACYREQUIRED] {PLAINTEXT_REFUSED}\r\n"
        )),
        "" => reply(format!("{tag} BAD Missing command.\r\n")),
        _ => reply(format!(
            "{tag} BAD Command not permitted before STARTTLS.\r\n"
        )),
    }
}

fn pop3(line: &[u8]) -> Answer {
    let (command, _) = words(line);
    let reply = |text: &str| Answer::Reply(text.as_bytes().to_vec());
    match command.to_ascii_uppercase().as_str() {
        "CAPA" => reply("+OK\r\nCAPA\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nSTLS\r\n.\r\n"),
        "STLS" => Answer::StartTls(b"+OK Begin TLS negotiation now.\r\n".to_vec()),
        "QUIT" => Answer::Close(b"+OK Logging out.\r\n".to_vec()),
        "USER" | "PASS" | "AUTH" | "APOP" => reply(&format!("-ERR [AUTH] {PLAINTEXT_REFUSED}\r\n")),
        _ => reply("-ERR Unknown command before STLS.\r\n"),
    }
}

fn sieve(line: &[u8], sieve_capability: &str) -> Answer {
    let (command, _) = words(line);
    let reply = |text: String| Answer::Reply(text.into_bytes());
    match command.to_ascii_uppercase().as_str() {
        "CAPABILITY" => Answer::Reply(sieve_capabilities(
            sieve_capability,
            "OK \"Capability completed.\"",
        )),
        "NOOP" => reply("OK \"NOOP completed.\"\r\n".to_owned()),
        "STARTTLS" => Answer::StartTls(b"OK \"Begin TLS negotiation now.\"\r\n".to_vec()),
        "LOGOUT" => Answer::Close(b"OK \"Logout completed.\"\r\n".to_vec()),
        // RFC 5804 1.3's response code for it, as dovecot answers.
        "AUTHENTICATE" => reply(format!("NO (ENCRYPT-NEEDED) \"{PLAINTEXT_REFUSED}\"\r\n")),
        _ => reply("NO \"Command not permitted before STARTTLS.\"\r\n".to_owned()),
    }
}

/// Lines as a client sends them before TLS: CRLF or a bare LF ends one.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    buffer: Vec<u8>,
}

/// What [`Lines::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// A whole line, without its end.
    Line(Vec<u8>),
    /// Nothing whole yet: read more.
    More,
    /// The line is longer than [`LINE_LIMIT`].
    TooLong,
}

impl Lines {
    /// Takes bytes read from the client.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole line.
    pub(crate) fn next_line(&mut self) -> Next {
        match self.buffer.iter().position(|&b| b == b'\n') {
            Some(end) if end > LINE_LIMIT => Next::TooLong,
            Some(end) => {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Next::Line(line)
            }
            None if self.buffer.len() > LINE_LIMIT => Next::TooLong,
            None => Next::More,
        }
    }

    /// Whether bytes after the last whole line were received. After the line that
    /// asked for TLS there must be none: a client waits for the answer before its
    /// handshake, so anything else is plaintext injected to run inside the TLS
    /// session (CVE-2011-0411's kind), and the connection is closed instead.
    pub(crate) fn has_more(&self) -> bool {
        !self.buffer.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(answer: Answer) -> (&'static str, String) {
        match answer {
            Answer::Reply(b) => ("reply", String::from_utf8(b).unwrap()),
            Answer::StartTls(b) => ("starttls", String::from_utf8(b).unwrap()),
            Answer::Close(b) => ("close", String::from_utf8(b).unwrap()),
        }
    }

    #[test]
    fn imap_before_tls_offers_starttls_and_refuses_logins() {
        let greeting = String::from_utf8(greeting(Protocol::Imap, "")).unwrap();
        assert_eq!(
            greeting,
            "* OK [CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED] Ready; STARTTLS before logging in.\r\n"
        );
        assert_eq!(
            text(imap(b"a1 capability")),
            (
                "reply",
                "* CAPABILITY IMAP4rev1 ID STARTTLS LOGINDISABLED\r\na1 OK Pre-login capabilities listed, post-login capabilities have more.\r\n".into()
            )
        );
        assert_eq!(
            text(imap(b"a2 LOGIN user@example.org secret")),
            (
                "reply",
                "a2 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n".into()
            )
        );
        assert_eq!(
            text(imap(b"a3 AUTHENTICATE PLAIN AGFAYg==")).1,
            "a3 NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"
        );
        assert_eq!(
            text(imap(b"a4 ID (\"name\" \"x\")")),
            ("reply", "* ID NIL\r\na4 OK ID completed.\r\n".into())
        );
        assert_eq!(
            text(imap(b"a5 noop")),
            ("reply", "a5 OK NOOP completed.\r\n".into())
        );
        assert_eq!(
            text(imap(b"a6 StartTLS")),
            ("starttls", "a6 OK Begin TLS negotiation now.\r\n".into())
        );
        assert_eq!(
            text(imap(b"a7 LOGOUT")),
            (
                "close",
                "* BYE Logging out\r\na7 OK Logout completed.\r\n".into()
            )
        );
        assert_eq!(
            text(imap(b"a8 SELECT INBOX")),
            (
                "reply",
                "a8 BAD Command not permitted before STARTTLS.\r\n".into()
            )
        );
        assert_eq!(text(imap(b"a9")).1, "a9 BAD Missing command.\r\n");
    }

    #[test]
    fn an_imap_tag_that_could_forge_a_line_is_never_echoed() {
        for line in [&b""[..], b"*", b"a{3}", b"+x", b"\"a\" NOOP", b"a\rb NOOP"] {
            assert_eq!(
                text(imap(line)),
                (
                    "reply",
                    "* BAD Error in IMAP command received by server.\r\n".into()
                ),
                "{line:?}"
            );
        }
    }

    #[test]
    fn pop3_before_tls_offers_stls_and_refuses_logins() {
        assert_eq!(
            greeting(Protocol::Pop3, ""),
            b"+OK Ready; STLS before logging in.\r\n"
        );
        assert_eq!(
            text(pop3(b"CAPA")),
            (
                "reply",
                "+OK\r\nCAPA\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nSTLS\r\n.\r\n".into()
            )
        );
        for login in [
            &b"USER a@example.org"[..],
            b"pass x",
            b"AUTH PLAIN",
            b"APOP a b",
        ] {
            assert_eq!(
                text(pop3(login)),
                (
                    "reply",
                    "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n".into()
                )
            );
        }
        assert_eq!(
            text(pop3(b"stls")),
            ("starttls", "+OK Begin TLS negotiation now.\r\n".into())
        );
        assert_eq!(
            text(pop3(b"QUIT")),
            ("close", "+OK Logging out.\r\n".into())
        );
        assert_eq!(
            text(pop3(b"RETR 1")),
            ("reply", "-ERR Unknown command before STLS.\r\n".into())
        );
    }

    #[test]
    fn sieve_before_tls_shows_dovecots_extensions_and_no_mechanism() {
        let dovecot = b"\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n\"SIEVE\" \"fileinto reject\"\r\n\"NOTIFY\" \"mailto\"\r\n\"SASL\" \"PLAIN LOGIN\"\r\n\"VERSION\" \"1.0\"\r\nOK \"Dovecot ready.\"\r\n";
        let line = sieve_line(dovecot).unwrap();
        assert_eq!(line, "\"SIEVE\" \"fileinto reject\"");
        let expected = "\"IMPLEMENTATION\" \"postmaster\"\r\n\"SIEVE\" \"fileinto reject\"\r\n\"SASL\" \"\"\r\n\"STARTTLS\"\r\n\"VERSION\" \"1.0\"\r\n";
        assert_eq!(
            String::from_utf8(greeting(Protocol::Sieve, &line)).unwrap(),
            format!("{expected}OK \"Ready; STARTTLS before logging in.\"\r\n")
        );
        assert_eq!(
            text(sieve(b"capability", &line)),
            (
                "reply",
                format!("{expected}OK \"Capability completed.\"\r\n")
            )
        );
        assert_eq!(
            text(sieve(b"AUTHENTICATE \"PLAIN\" \"AGFAYg==\"", &line)),
            (
                "reply",
                "NO (ENCRYPT-NEEDED) \"Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\"\r\n"
                    .into()
            )
        );
        assert_eq!(
            text(sieve(b"STARTTLS", &line)),
            ("starttls", "OK \"Begin TLS negotiation now.\"\r\n".into())
        );
        assert_eq!(
            text(sieve(b"LOGOUT", &line)),
            ("close", "OK \"Logout completed.\"\r\n".into())
        );
        assert_eq!(
            text(sieve(b"LISTSCRIPTS", &line)).1,
            "NO \"Command not permitted before STARTTLS.\"\r\n"
        );
        // Without dovecot's line: the capability still says SIEVE, empty.
        assert!(
            String::from_utf8(greeting(Protocol::Sieve, ""))
                .unwrap()
                .contains("\r\n\"SIEVE\" \"\"\r\n")
        );
    }

    #[test]
    fn a_sieve_line_is_taken_only_whole_and_quoted() {
        assert_eq!(sieve_line(b"OK \"Dovecot ready.\"\r\n"), None);
        assert_eq!(sieve_line(b"\"SIEVE\" {12}\r\n"), None);
        assert_eq!(sieve_line(b"\xff\xfe"), None);
        assert_eq!(
            sieve_line(b"\"sieve\" \"a b\"\n").as_deref(),
            Some("\"sieve\" \"a b\"")
        );
    }

    #[test]
    fn lines_end_at_lf_with_or_without_cr_and_keep_what_follows() {
        let mut lines = Lines::default();
        lines.push(b"a1 NOOP\r\na2 CAPA");
        assert_eq!(lines.next_line(), Next::Line(b"a1 NOOP".to_vec()));
        assert_eq!(lines.next_line(), Next::More);
        assert!(lines.has_more());
        lines.push(b"BILITY\na3 STARTTLS\r\n");
        assert_eq!(lines.next_line(), Next::Line(b"a2 CAPABILITY".to_vec()));
        assert_eq!(lines.next_line(), Next::Line(b"a3 STARTTLS".to_vec()));
        assert!(!lines.has_more());
    }

    #[test]
    fn a_line_over_the_limit_is_refused_whole_or_not() {
        let mut lines = Lines::default();
        lines.push(&vec![b'a'; LINE_LIMIT + 1]);
        assert_eq!(lines.next_line(), Next::TooLong);
        let mut lines = Lines::default();
        lines.push(&vec![b'a'; LINE_LIMIT]);
        assert_eq!(lines.next_line(), Next::More);
        lines.push(b"\r\n");
        assert_eq!(lines.next_line(), Next::TooLong);
        let mut lines = Lines::default();
        let mut exact = vec![b'a'; LINE_LIMIT - 1];
        exact.extend_from_slice(b"\r\n");
        lines.push(&exact);
        assert!(matches!(lines.next_line(), Next::Line(l) if l.len() == LINE_LIMIT - 1));
    }
}
