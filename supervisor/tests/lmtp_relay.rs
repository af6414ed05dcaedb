//! `postmaster lmtp-relay` as systemd runs it: the binary, handed a listening unix
//! socket as fd 3 (LISTEN_FDS), in front of a fake dovecot on a real unix socket in
//! a temporary directory. The fake loses connections before its greeting the way a
//! dovecot reload does; the relay must hide that from its client and pass every
//! byte unchanged afterwards, and never try again once the client spoke.

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
