//! `postmaster lmtp-relay` as systemd runs it: the binary, handed a listening unix
//! socket as fd 3 (LISTEN_FDS), in front of a fake dovecot on a real unix socket in
//! a temporary directory. The fake loses connections before its greeting the way a
//! dovecot reload does; the relay must hide that from its client, pass what it
//! does not follow unchanged afterwards, and never open another connection once
//! the client spoke. A fake that speaks LMTP answers a RCPT as dovecot does when a
//! reload cut its user lookup: the relay sends that RCPT again, and the client sees
//! only the last reply.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const GREETING: &[u8] = b"220 fake.example Dovecot ready.\r\n";

/// The relay, started as systemd starts it: the listening socket as fd 3,
/// LISTEN_FDS=1 and LISTEN_PID its own pid (the shell's, which it execs).
struct Relay(Child);

impl Relay {
    fn start(listen: &Path, backend: &Path, give_up_after: u64) -> Relay {
        Relay::take(
            UnixListener::bind(listen).expect("bind the relay's socket"),
            backend,
            give_up_after,
        )
    }

    /// The relay on a socket that is listening already.
    fn take(listener: UnixListener, backend: &Path, give_up_after: u64) -> Relay {
        let child = Command::new("sh")
            .arg("-c")
            .arg(
                "exec 3<&0 0</dev/null; export LISTEN_FDS=1 LISTEN_PID=$$; \
                 exec \"$0\" lmtp-relay --backend \"$1\" --give-up-after \"$2\"",
            )
            .arg(env!("CARGO_BIN_EXE_postmaster"))
            .arg(backend)
            .arg(give_up_after.to_string())
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .env("POSTMASTER_LOG", "debug")
            .spawn()
            .expect("start postmaster lmtp-relay");
        Relay(child)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect to the relay");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn read_exactly(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read from the relay");
    buf
}

/// A fake dovecot at `path`, bound after `bind_after` (the socket missing until
/// then, as between a reload's unlink and bind). Its first `lose` connections are
/// closed before a complete greeting (half of them after half a greeting); the
/// next one greets and runs `serve`. Returns the number of connections it accepted.
fn fake_dovecot(
    path: PathBuf,
    bind_after: Duration,
    lose: usize,
    serve: impl FnOnce(UnixStream) + Send + 'static,
) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        thread::sleep(bind_after);
        let listener = UnixListener::bind(&path).expect("bind the fake dovecot");
        let mut serve = Some(serve);
        let mut hanging = Vec::new();
        for (i, conn) in listener.incoming().enumerate() {
            let mut conn = conn.expect("accept");
            count.fetch_add(1, Ordering::SeqCst);
            if i < lose {
                if i % 2 == 1 {
                    let _ = conn.write_all(&GREETING[..10]);
                }
                drop(conn);
                continue;
            }
            match serve.take() {
                Some(serve) => {
                    conn.write_all(GREETING).unwrap();
                    serve(conn);
                }
                // Any further connection is counted and left to hang.
                None => hanging.push(conn),
            }
        }
    });
    accepted
}

#[test]
fn a_greeting_lost_at_a_reload_is_retried_and_every_byte_then_passes_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, backend) = (dir.path().join("relay"), dir.path().join("dovecot-lmtp"));
    // Missing for 150 ms, then 3 connections lost before the greeting; then an
    // echo of everything, to the client's end of input.
    let accepted = fake_dovecot(backend.clone(), Duration::from_millis(150), 3, |mut c| {
        let mut all = Vec::new();
        c.read_to_end(&mut all).unwrap();
        c.write_all(&all).unwrap();
    });
    let _relay = Relay::start(&listen, &backend, 30);

    let mut c = client(&listen);
    assert_eq!(read_exactly(&mut c, GREETING.len()), GREETING);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        4,
        "3 lost, the 4th greeted"
    );
    // Every byte value, 1 MiB of them, not a multiple of any buffer size.
    let payload: Vec<u8> = (0..1_048_583u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut writer = c.try_clone().unwrap();
    let sent = payload.clone();
    let w = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    w.join().unwrap();
    assert!(
        back == payload,
        "{} bytes back of {}",
        back.len(),
        payload.len()
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
}

#[test]
fn a_connection_lost_after_the_client_spoke_is_not_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, backend) = (dir.path().join("relay"), dir.path().join("dovecot-lmtp"));
    // Greets, takes the first byte of the client's LHLO, and dies (a duplicate
    // would come from a relay that then sent the delivery to another connection).
    let accepted = fake_dovecot(backend.clone(), Duration::ZERO, 0, |mut c| {
        let mut one = [0u8; 1];
        c.read_exact(&mut one).unwrap();
    });
    let _relay = Relay::start(&listen, &backend, 30);

    let mut c = client(&listen);
    assert_eq!(read_exactly(&mut c, GREETING.len()), GREETING);
    c.write_all(b"LHLO postfix.example\r\n").unwrap();
    let mut rest = Vec::new();
    // The end of the connection, and nothing else: no second greeting.
    let _ = c.read_to_end(&mut rest);
    assert_eq!(rest, b"");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn without_dovecot_postfix_is_told_421_when_the_time_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, backend) = (dir.path().join("relay"), dir.path().join("dovecot-lmtp"));
    let _relay = Relay::start(&listen, &backend, 1);

    let started = Instant::now();
    let mut c = client(&listen);
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).unwrap();
    let waited = started.elapsed();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with("421 4.3.0 ") && answer.ends_with("\r\n"),
        "{answer:?}"
    );
    assert!(answer.lines().count() == 1, "{answer:?}");
    // It kept trying for the second it was given, and not much longer.
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[test]
fn connections_made_before_the_relay_runs_wait_in_the_socket() {
    // systemd holds the socket while the relay restarts: a connection made then is
    // served once the relay takes the socket, not refused.
    let dir = tempfile::tempdir().unwrap();
    let (listen, backend) = (dir.path().join("relay"), dir.path().join("dovecot-lmtp"));
    let listener = UnixListener::bind(&listen).unwrap();
    let mut early = client(&listen);
    let _accepted = fake_dovecot(backend.clone(), Duration::ZERO, 0, |mut c| {
        let mut line = [0u8; 6];
        c.read_exact(&mut line).unwrap();
        c.write_all(b"250 ok\r\n").unwrap();
    });
    // The same socket, handed over now.
    let _relay = Relay::take(listener, &backend, 30);
    assert_eq!(read_exactly(&mut early, GREETING.len()), GREETING);
    early.write_all(b"QUIT\r\n").unwrap();
    assert_eq!(read_exactly(&mut early, 8), b"250 ok\r\n");
}

#[test]
fn without_a_socket_from_systemd_it_says_what_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_postmaster"))
        .arg("lmtp-relay")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("postmaster-lmtp.socket"), "{err}");
}

/// What a fake dovecot that speaks LMTP saw of one connection.
#[derive(Default)]
struct Seen {
    /// Every command line, as received.
    commands: Vec<String>,
    /// Every message, as received between DATA's 354 and the lone dot.
    messages: Vec<Vec<u8>>,
}

/// A fake dovecot's LMTP: greets, offers PIPELINING and CHUNKING among its
/// extensions, and answers its first `cut` RCPTs the way dovecot does when a
/// reload cut its user lookup; every later RCPT is accepted.
fn lmtp_dovecot(path: PathBuf, cut: usize) -> Arc<std::sync::Mutex<Seen>> {
    use std::io::BufRead;
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let record = seen.clone();
    let listener = UnixListener::bind(&path).expect("bind the fake dovecot");
    thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        let mut out = conn.try_clone().unwrap();
        let mut lines = std::io::BufReader::new(conn);
        out.write_all(GREETING).unwrap();
        let (mut refused, mut accepted) = (0, 0);
        loop {
            let mut line = Vec::new();
            if lines.read_until(b'\n', &mut line).unwrap() == 0 {
                return;
            }
            let command = String::from_utf8(line).unwrap();
            record.lock().unwrap().commands.push(command.clone());
            let reply: &[u8] = match &command[..4] {
                "LHLO" => {
                    b"250-fake.example\r\n250-8BITMIME\r\n250-CHUNKING\r\n\
                      250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n"
                }
                "MAIL" => b"250 2.1.0 OK\r\n",
                "RCPT" if refused < cut => {
                    refused += 1;
                    b"451 4.3.0 <thomas@example.org> Temporary internal error\r\n"
                }
                "RCPT" => {
                    accepted += 1;
                    b"250 2.1.5 OK\r\n"
                }
                "DATA" if accepted == 0 => b"554 5.5.1 No valid recipients\r\n",
                "DATA" => {
                    out.write_all(b"354 OK\r\n").unwrap();
                    let mut message = Vec::new();
                    loop {
                        let mut line = Vec::new();
                        lines.read_until(b'\n', &mut line).unwrap();
                        if line == b".\r\n" {
                            break;
                        }
                        message.extend_from_slice(&line);
                    }
                    record.lock().unwrap().messages.push(message);
                    for _ in 0..accepted {
                        out.write_all(b"250 2.0.0 <thomas@example.org> Saved\r\n")
                            .unwrap();
                    }
                    continue;
                }
                "QUIT" => {
                    out.write_all(b"221 2.0.0 Bye\r\n").unwrap();
                    return;
                }
                _ => b"500 5.5.1 Unknown command\r\n",
            };
            out.write_all(reply).unwrap();
        }
    });
    seen
}

/// Reads one reply (all its lines) from the relay.
fn read_reply(r: &mut impl std::io::BufRead) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "closed after {reply:?}"
        );
        reply.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

/// postfix's side of one delivery to thomas, in lockstep; returns each reply.
fn deliver(listen: &Path, message: &[u8]) -> Vec<String> {
    let c = client(listen);
    let mut w = c.try_clone().unwrap();
    let mut r = std::io::BufReader::new(c);
    let mut replies = vec![read_reply(&mut r)];
    for command in [
        "LHLO postfix.example\r\n",
        "MAIL FROM:<someone@elsewhere.example>\r\n",
        "RCPT TO:<thomas@example.org>\r\n",
        "DATA\r\n",
    ] {
        w.write_all(command.as_bytes()).unwrap();
        replies.push(read_reply(&mut r));
    }
    if replies[4].starts_with("354") {
        w.write_all(message).unwrap();
        w.write_all(b".\r\n").unwrap();
        replies.push(read_reply(&mut r));
    }
    w.write_all(b"QUIT\r\n").unwrap();
    replies.push(read_reply(&mut r));
    replies
}

/// A message with lines that read like commands and replies, and a stuffed dot.
const MESSAGE: &[u8] = b"Subject: cut\r\n\r\nRCPT TO:<someone@example.org>\r\n\
451 4.3.0 not a reply\r\n..stuffed\r\n.\tnot the end\r\n";

#[test]
fn a_rcpt_cut_by_a_reload_is_sent_again_and_postfix_sees_250_and_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, backend) = (dir.path().join("relay"), dir.path().join("dovecot-lmtp"));
    let seen = lmtp_dovecot(backend.clone(), 1);
    let _relay = Relay::start(&listen, &backend, 30);

    let replies = deliver(&listen, MESSAGE);
    // postfix never learns of PIPELINING or CHUNKING, and not of the 451.
    assert_eq!(
        replies[1],
        "250-fake.example\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
    assert_eq!(replies[3], "250 2.1.5 OK\r\n", "{replies:?}");
    assert_eq!(replies[4], "354 OK\r\n");
    assert_eq!(replies[5], "250 2.0.0 <thomas@example.org> Saved\r\n");
    assert_eq!(replies[6], "221 2.0.0 Bye\r\n");
    assert_eq!(replies.len(), 7, "{replies:?}");
    let seen = seen.lock().unwrap();
    let rcpts = seen.commands.iter().filter(|c| c.starts_with("RCPT"));
    assert_eq!(rcpts.count(), 2, "{:?}", seen.commands);
    assert_eq!(seen.messages, [MESSAGE.to_vec()]);
}

#[test]
fn a_rcpt_cut_every_time_reaches_postfix_as_dovecots_451_after_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, backend) = (dir.path().join("relay"), dir.path().join("dovecot-lmtp"));
    let seen = lmtp_dovecot(backend.clone(), usize::MAX);
    let _relay = Relay::start(&listen, &backend, 30);

    let started = Instant::now();
    let replies = deliver(&listen, MESSAGE);
    let waited = started.elapsed();
    assert_eq!(
        replies[3],
        "451 4.3.0 <thomas@example.org> Temporary internal error\r\n"
    );
    // No recipient: dovecot's refusal of DATA, and no message.
    assert_eq!(replies[4], "554 5.5.1 No valid recipients\r\n");
    // 4 tries, 100 + 300 + 600 ms apart.
    assert!(
        waited >= Duration::from_millis(1000) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    let seen = seen.lock().unwrap();
    let rcpts = seen.commands.iter().filter(|c| c.starts_with("RCPT"));
    assert_eq!(rcpts.count(), 4, "{:?}", seen.commands);
    assert!(seen.messages.is_empty());
}
