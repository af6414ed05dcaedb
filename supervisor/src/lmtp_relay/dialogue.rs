//! The LMTP dialogue between postfix and dovecot as the relay follows it: bytes in
//! from either side, actions out (bytes to send on, a pause, a line for the
//! journal). No I/O, no clock: the relay's loop does what the actions say.
//!
//! Why it follows the dialogue at all: a dovecot reload replaces its auth process,
//! and an lmtp process whose user lookup was queued on the old one answers that
//! RCPT `451 4.3.0 <...> Temporary internal error` (dovecot logs "auth-master:
//! userdb lookup(...): Disconnected unexpectedly"). postfix would defer the
//! recipient to its next queue run, minutes later. Nothing was delivered, and RFC
//! 5321 lets a client send RCPT again after a 4xx: the relay does, after a short
//! pause in which the lmtp process's next lookup reaches the new auth process, and
//! postfix sees only the last reply.
//!
//! How it stays exact:
//! - dovecot's LHLO reply loses PIPELINING, CHUNKING and BINARYMIME, so postfix
//!   speaks in lockstep (one command, then its reply) and sends its message with
//!   DATA: every reply answers the one command before it, and a RCPT's reply can
//!   be held back while the relay asks again without anything else in flight.
//! - Commands are followed one at a time even if a client pipelines anyway: what
//!   comes after a command waits in the relay until that command's reply passed.
//! - After DATA's 354 the message passes unchanged, whatever its lines look like,
//!   to the line that is a single dot (CRLF before and after, as RFC 5321 4.1.1.4
//!   has it; a stuffed dot is content), and then one reply per accepted recipient
//!   (LMTP, RFC 2033 4.2).
//! - Anything it does not follow (a command it does not know, such as STARTTLS or
//!   BDAT; a reply that is not one; dovecot speaking out of turn; a line too long
//!   to be a command) makes it copy the bytes unchanged for the rest of the
//!   connection, what it held back first: it can always stop following, never
//!   misread.

use std::time::Duration;

/// Pauses before each new try of a RCPT dovecot answered with an internal error:
/// 3 more tries within a second. A reload starts the new auth process within tens
/// of milliseconds (bench: the storm), so the first pause is short; postfix waits
/// for a RCPT reply for minutes (lmtp_rcpt_timeout, 300 s), so a second is cheap.
pub(crate) const RCPT_PAUSES: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(600),
];

/// The longest command line taken: RFC 5321 4.5.3.1.4 allows 512 octets, more with
/// extensions' parameters. Anything longer is not followed.
const COMMAND_LIMIT: usize = 8192;

/// The longest reply taken: LHLO's lists every extension on a line of its own.
const REPLY_LIMIT: usize = 65536;

/// The most bytes of a client's held back while a reply is awaited: a client in
/// lockstep sends none; one that pipelines anyway is followed to this much.
const HELD_LIMIT: usize = 65536;

/// Extensions postfix must not use through the relay: with PIPELINING it would send
/// a RCPT before the reply of the one before; CHUNKING (and BINARYMIME, which needs
/// it) sends the message with BDAT, whose length-counted chunks the relay does not
/// follow. Without them postfix speaks in lockstep and sends DATA, at the cost of a
/// round trip per command over a unix socket.
const HIDDEN: [&str; 3] = ["PIPELINING", "CHUNKING", "BINARYMIME"];

/// How far a reply has come, from the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// No complete reply yet.
    Incomplete,
    /// A complete reply (all its lines): its code, and how many bytes it spans.
    Complete { code: u16, len: usize },
    /// Not an SMTP reply, or longer than `limit`.
    Invalid,
}

/// Judges bytes read from dovecot: a reply is one line `NNN text`, or several
/// `NNN-text` lines ended by one `NNN text`, each ending in LF (CRLF in practice),
/// the same code on every line (RFC 5321 4.2.1).
pub(crate) fn reply(buf: &[u8], limit: usize) -> Reply {
    let mut start = 0;
    let mut first_code = None;
    loop {
        let rest = &buf[start..];
        let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
            // A line that is already wrong, or too long, will not become right.
            let wrong_start = rest.iter().take(3).any(|b| !b.is_ascii_digit())
                || rest
                    .get(3)
                    .is_some_and(|b| !matches!(b, b' ' | b'-' | b'\r'));
            return if wrong_start || buf.len() >= limit {
                Reply::Invalid
            } else {
                Reply::Incomplete
            };
        };
        let end = start + newline + 1;
        if end > limit {
            return Reply::Invalid;
        }
        let line = &rest[..newline];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(code) = reply_code(line) else {
            return Reply::Invalid;
        };
        if *first_code.get_or_insert(code) != code {
            return Reply::Invalid;
        }
        match line.get(3) {
            None | Some(b' ') => return Reply::Complete { code, len: end },
            Some(b'-') => start = end,
            Some(_) => return Reply::Invalid,
        }
    }
}

fn reply_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether a RCPT's reply is worth sending the RCPT again for: `451` with the
/// enhanced status `4.3.0`, dovecot's "the mail system failed, not your mailbox or
/// message": its cut user lookup ("Temporary internal error"), a failed quota
/// lookup, and its per-user concurrency count racing a delivery that just ended
/// ("Too many concurrent deliveries for user", anvil hears of the end a moment
/// later). Nothing else: `452` (too many recipients, or over quota with
/// quota_full_tempfail) and `450` (mailbox busy) say the mailbox or the
/// transaction is the problem, which a second within this connection does not
/// change; other 451s (4.4.x network, 4.7.x policy) are someone else's; 421 ends the
/// connection; 5xx are final.
pub(crate) fn internal_error(reply: &[u8]) -> bool {
    let line = reply.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let enhanced = line
        .get(4..)
        .unwrap_or_default()
        .split(|&b| b == b' ')
        .next();
    line.starts_with(b"451") && enhanced == Some(b"4.3.0".as_slice())
}

/// dovecot's reply to LHLO without the extensions in [`HIDDEN`], its other lines as
/// they were (each re-ended in CRLF, the last one with `250 `).
fn without_hidden(reply: &[u8]) -> Vec<u8> {
    let lines: Vec<&[u8]> = reply
        .split_inclusive(|&b| b == b'\n')
        .map(|line| {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            line.strip_suffix(b"\r").unwrap_or(line)
        })
        .collect();
    let kept: Vec<&[u8]> = lines
        .iter()
        .enumerate()
        .filter(|(i, line)| {
            // The first line is dovecot's name, never an extension.
            *i == 0 || {
                let keyword = line.get(4..).unwrap_or_default();
                let keyword = keyword.split(|&b| b == b' ').next().unwrap_or_default();
                !HIDDEN
                    .iter()
                    .any(|h| h.as_bytes().eq_ignore_ascii_case(keyword))
            }
        })
        .map(|(_, line)| *line)
        .collect();
    let mut out = Vec::with_capacity(reply.len());
    for (i, line) in kept.iter().enumerate() {
        out.extend_from_slice(&line[..3]);
        out.push(if i + 1 == kept.len() { b' ' } else { b'-' });
        out.extend_from_slice(line.get(4..).unwrap_or_default());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What the relay is to do, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send these bytes to dovecot.
    ToServer(Vec<u8>),
    /// Send these bytes to postfix.
    ToClient(Vec<u8>),
    /// Call [`Dialogue::resume`] after this long.
    Pause(Duration),
    /// For the journal: the RCPT dovecot answered `reply` goes to it again, as try
    /// `try_no`.
    Resent { try_no: usize, reply: String },
    /// For the journal: the RCPT was accepted at try `try_no` (more than 1): without
    /// the relay postfix would have deferred it.
    Saved { try_no: usize },
    /// For the journal: still `reply` after `tries` tries; postfix gets that.
    GaveUp { tries: usize, reply: String },
    /// For the journal: from here on bytes pass unchanged, because of this.
    Unfollowed(String),
}

/// The command whose reply is awaited.
#[derive(Debug)]
enum Awaited {
    Lhlo,
    /// MAIL and RSET: a new transaction, no recipient accepted yet.
    NewTransaction,
    /// The RCPT's line as postfix sent it, and which try this is (from 1).
    Rcpt {
        line: Vec<u8>,
        try_no: usize,
    },
    Data,
    /// One reply, nothing to remember of it (NOOP, VRFY, HELP, QUIT).
    Other,
}

/// Where the message content is in looking for its end: only a line that is a
/// single dot, between CRLFs, ends it.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// After CRLF (or the 354): a line begins.
    LineStart,
    /// A dot at a line's start.
    Dot,
    /// A dot and CR at a line's start.
    DotCr,
    /// Within a line.
    Within,
    /// A CR within a line.
    Cr,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for postfix's next command.
    Command,
    /// A command went to dovecot; its reply is awaited.
    Awaiting(Awaited),
    /// dovecot answered a RCPT with an internal error; the pause runs before it is
    /// asked again. The reply is held back from postfix meanwhile.
    Pausing {
        line: Vec<u8>,
        try_no: usize,
        held: Vec<u8>,
    },
    /// The message, from postfix to dovecot, until the line that is a single dot.
    Content(Scan),
    /// dovecot's replies after the message: this many more.
    DataReplies(usize),
    /// Not followed any more: bytes pass unchanged.
    Raw,
}

/// One LMTP connection's dialogue, from after dovecot's greeting.
#[derive(Debug)]
pub(crate) struct Dialogue {
    phase: Phase,
    /// postfix's bytes not acted on yet: a command line not yet complete, or what
    /// came after a command whose reply is awaited.
    client: Vec<u8>,
    /// dovecot's bytes not acted on yet: a reply not yet complete.
    server: Vec<u8>,
    /// Recipients dovecot accepted in this transaction: after the message it sends
    /// one reply for each.
    accepted: usize,
}

impl Dialogue {
    pub(crate) fn new() -> Dialogue {
        Dialogue {
            phase: Phase::Command,
            client: Vec::new(),
            server: Vec::new(),
            accepted: 0,
        }
    }

    /// Whether bytes now pass unchanged: the relay may copy them without this.
    pub(crate) fn is_raw(&self) -> bool {
        matches!(self.phase, Phase::Raw)
    }

    /// postfix sent these bytes.
    pub(crate) fn client_sent(&mut self, bytes: &[u8]) -> Vec<Action> {
        self.received(bytes, true)
    }

    /// dovecot sent these bytes.
    pub(crate) fn server_sent(&mut self, bytes: &[u8]) -> Vec<Action> {
        self.received(bytes, false)
    }

    fn received(&mut self, bytes: &[u8], from_client: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        match (self.is_raw(), from_client) {
            (true, true) => actions.push(Action::ToServer(bytes.to_vec())),
            (true, false) => actions.push(Action::ToClient(bytes.to_vec())),
            (false, true) => self.client.extend_from_slice(bytes),
            (false, false) => self.server.extend_from_slice(bytes),
        }
        if !self.is_raw() {
            self.advance(&mut actions);
        }
        actions
    }

    /// The pause of the last [`Action::Pause`] is over: the RCPT goes again.
    pub(crate) fn resume(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::Pausing { line, try_no, held } => {
                actions.push(Action::Resent {
                    try_no: try_no + 1,
                    reply: text(&held),
                });
                actions.push(Action::ToServer(line.clone()));
                self.phase = Phase::Awaiting(Awaited::Rcpt {
                    line,
                    try_no: try_no + 1,
                });
                self.advance(&mut actions);
            }
            // Stopped following meanwhile: nothing to do.
            other => self.phase = other,
        }
        actions
    }

    /// Stops following (a side closed, say): what was held back goes on, and bytes
    /// pass unchanged from now on.
    pub(crate) fn stop(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.go_raw(&mut actions);
        actions
    }

    fn unfollowed(&mut self, why: String, actions: &mut Vec<Action>) {
        actions.push(Action::Unfollowed(why));
        self.go_raw(actions);
    }

    fn go_raw(&mut self, actions: &mut Vec<Action>) {
        if let Phase::Pausing { held, .. } = std::mem::replace(&mut self.phase, Phase::Raw) {
            // Held back while the relay waited to ask again: postfix gets it as the
            // RCPT's reply after all.
            actions.push(Action::ToClient(held));
        }
        if !self.server.is_empty() {
            actions.push(Action::ToClient(std::mem::take(&mut self.server)));
        }
        if !self.client.is_empty() {
            actions.push(Action::ToServer(std::mem::take(&mut self.client)));
        }
    }

    /// Acts on what was received until more is needed.
    fn advance(&mut self, actions: &mut Vec<Action>) {
        loop {
            let progressed = match self.phase {
                Phase::Raw => return,
                Phase::Command | Phase::Pausing { .. } | Phase::Content(_)
                    if !self.server.is_empty() =>
                {
                    let seen = text(&self.server);
                    self.unfollowed(format!("dovecot sent {seen:?} unasked"), actions);
                    return;
                }
                Phase::Command => self.command(actions),
                Phase::Awaiting(_) | Phase::DataReplies(_) => self.reply(actions),
                Phase::Content(scan) => self.content(scan, actions),
                Phase::Pausing { .. } => false,
            };
            if self.is_raw() {
                return;
            }
            if !progressed {
                if self.client.len() > HELD_LIMIT {
                    self.unfollowed(
                        format!("postfix sent {} bytes without waiting", self.client.len()),
                        actions,
                    );
                }
                return;
            }
        }
    }

    /// A command line from postfix, if one is complete.
    fn command(&mut self, actions: &mut Vec<Action>) -> bool {
        let Some(newline) = self.client.iter().position(|&b| b == b'\n') else {
            if self.client.len() > COMMAND_LIMIT {
                self.unfollowed(
                    format!("no command line in {} bytes", self.client.len()),
                    actions,
                );
            }
            return false;
        };
        if newline >= COMMAND_LIMIT {
            self.unfollowed(format!("a command line of {} bytes", newline + 1), actions);
            return false;
        }
        let verb = self.client[..newline]
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let awaited = match verb.as_slice() {
            b"LHLO" => Awaited::Lhlo,
            b"MAIL" | b"RSET" => Awaited::NewTransaction,
            b"RCPT" => Awaited::Rcpt {
                line: self.client[..=newline].to_vec(),
                try_no: 1,
            },
            b"DATA" => Awaited::Data,
            b"NOOP" | b"VRFY" | b"HELP" | b"QUIT" => Awaited::Other,
            _ => {
                let verb = String::from_utf8_lossy(&verb[..verb.len().min(20)]).into_owned();
                self.unfollowed(format!("postfix sent {verb:?}"), actions);
                return false;
            }
        };
        let line: Vec<u8> = self.client.drain(..=newline).collect();
        actions.push(Action::ToServer(line));
        self.phase = Phase::Awaiting(awaited);
        true
    }

    /// A reply from dovecot, if one is complete.
    fn reply(&mut self, actions: &mut Vec<Action>) -> bool {
        let len = match reply(&self.server, REPLY_LIMIT) {
            Reply::Incomplete => return false,
            Reply::Invalid => {
                let seen = text(&self.server);
                self.unfollowed(format!("not a reply: {seen:?}"), actions);
                return false;
            }
            Reply::Complete { len, .. } => len,
        };
        let bytes: Vec<u8> = self.server.drain(..len).collect();
        let ok = bytes.first() == Some(&b'2');
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::DataReplies(left) => {
                if left > 1 {
                    self.phase = Phase::DataReplies(left - 1);
                } else {
                    self.accepted = 0;
                }
                actions.push(Action::ToClient(bytes));
            }
            Phase::Awaiting(Awaited::Lhlo) => {
                self.accepted = 0;
                actions.push(Action::ToClient(if ok {
                    without_hidden(&bytes)
                } else {
                    bytes
                }));
            }
            Phase::Awaiting(Awaited::NewTransaction) => {
                self.accepted = 0;
                actions.push(Action::ToClient(bytes));
            }
            Phase::Awaiting(Awaited::Rcpt { line, try_no }) => {
                if ok {
                    self.accepted += 1;
                    if try_no > 1 {
                        actions.push(Action::Saved { try_no });
                    }
                } else if internal_error(&bytes) && try_no <= RCPT_PAUSES.len() {
                    actions.push(Action::Pause(RCPT_PAUSES[try_no - 1]));
                    self.phase = Phase::Pausing {
                        line,
                        try_no,
                        held: bytes,
                    };
                    return true;
                } else if try_no > 1 {
                    actions.push(Action::GaveUp {
                        tries: try_no,
                        reply: text(&bytes),
                    });
                }
                actions.push(Action::ToClient(bytes));
            }
            Phase::Awaiting(Awaited::Data) => {
                if bytes.first() == Some(&b'3') {
                    if self.accepted == 0 {
                        // dovecot refuses DATA without a recipient: the relay's count
                        // and dovecot's differ, so the replies after the message
                        // cannot be counted.
                        actions.push(Action::ToClient(bytes));
                        self.unfollowed("DATA accepted with no recipient seen".into(), actions);
                        return false;
                    }
                    self.phase = Phase::Content(Scan::LineStart);
                }
                actions.push(Action::ToClient(bytes));
            }
            Phase::Awaiting(Awaited::Other) => actions.push(Action::ToClient(bytes)),
            other => unreachable!("a reply is read only when one is awaited, not in {other:?}"),
        }
        true
    }

    /// The message's bytes from postfix, passed on as they are, to its end.
    fn content(&mut self, mut scan: Scan, actions: &mut Vec<Action>) -> bool {
        if self.client.is_empty() {
            return false;
        }
        let mut end = None;
        for (i, &b) in self.client.iter().enumerate() {
            scan = match (scan, b) {
                (Scan::DotCr, b'\n') => {
                    end = Some(i + 1);
                    break;
                }
                (Scan::LineStart, b'.') => Scan::Dot,
                (Scan::Dot, b'\r') => Scan::DotCr,
                (Scan::Cr, b'\n') => Scan::LineStart,
                (_, b'\r') => Scan::Cr,
                _ => Scan::Within,
            };
        }
        match end {
            Some(end) => {
                actions.push(Action::ToServer(self.client.drain(..end).collect()));
                self.phase = Phase::DataReplies(self.accepted);
            }
            None => {
                actions.push(Action::ToServer(std::mem::take(&mut self.client)));
                self.phase = Phase::Content(scan);
            }
        }
        true
    }
}

/// A reply's text for the journal: its first line, without its line end.
fn text(bytes: &[u8]) -> String {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests;
