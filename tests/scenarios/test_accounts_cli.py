"""Accounts from the command line (`postmaster mailbox|alias|catch-all`), run inside
the bed as root against the running daemon, checked from outside with real clients:
the edits take effect with nothing restarted, and an edit that would break the file,
or one that would overwrite somebody else's change, writes nothing.

Each test puts the accounts file back as it found it, so any one runs alone.
"""

from __future__ import annotations

import imaplib
import json
import pytest

import mailclient as mc
from test_supervisor import _try_login as try_login, main_pids, status

ACCOUNTS = "/etc/postmaster/accounts.toml"
APPLIED = "the daemon applied it"


def file_state(host) -> tuple[str, str]:
    """The file's content and its inode, mode, owner and mtime."""
    text = host.bed.run(["cat", ACCOUNTS], check=True).stdout
    meta = host.bed.run(["stat", "-c", "%i %a %U:%G %Y.%y", ACCOUNTS], check=True).stdout
    return text, meta


def pm(host, *args: str, input: str | None = None):
    return host.bed.run(["postmaster", *args], input=input)


@pytest.fixture(autouse=True)
def restored(host):
    """Puts the accounts file back afterwards and waits until that is served."""
    text, _ = file_state(host)
    yield
    if file_state(host)[0] != text:
        put = f"cat > {ACCOUNTS}.edit && chown root:postmaster {ACCOUNTS}.edit && chmod 0640 {ACCOUNTS}.edit && mv {ACCOUNTS}.edit {ACCOUNTS}"
        host.bed.run(["sh", "-c", put], input=text, check=True)
    mc.wait_for("the accounts file served again", lambda: not status(host)["accounts"]["errors"], timeout=20)


def test_mailbox_add_then_imaps_login_and_mail_arrives(host, server):
    before = main_pids(host)
    out = pm(host, "mailbox", "add", "erin", "--quota", "100M", input="erin-secret-7\n")
    assert out.returncode == 0 and APPLIED in out.stdout, out
    listed = json.loads(pm(host, "mailbox", "list", "--json").stdout)
    erin = next(m for m in listed if m["name"] == "erin")
    assert erin["quota"] == 100 << 20 and erin["addresses"] == ["erin@example.org", "erin@example.net"], erin
    mc.wait_for("erin's login", lambda: try_login(server, "erin", "erin-secret-7"), timeout=10).logout()
    subject = mc.unique_subject("welcome erin")
    assert mc.send_inbound(server, "someone@elsewhere.example", ["erin@example.net"], subject) == {}
    mc.imap_find(server, "erin", "erin-secret-7", subject)
    assert main_pids(host) == before, "postfix or dovecot was restarted"


def test_mailbox_passwd_refuses_the_old_password_and_takes_the_new(host, server):
    assert pm(host, "mailbox", "add", "frank", input="frank-old-8\n").returncode == 0
    mc.wait_for("frank's login", lambda: try_login(server, "frank", "frank-old-8"), timeout=10).logout()
    owner_and_mode = host.bed.run(["stat", "-c", "%a %U:%G", ACCOUNTS], check=True).stdout
    out = pm(host, "mailbox", "passwd", "frank", input="frank-new-9\n")
    assert out.returncode == 0 and APPLIED in out.stdout, out
    assert host.bed.run(["stat", "-c", "%a %U:%G", ACCOUNTS], check=True).stdout == owner_and_mode
    mc.wait_for("the new password", lambda: try_login(server, "frank", "frank-new-9"), timeout=10).logout()
    with pytest.raises(imaplib.IMAP4.error):
        mc.imap_login(server, "frank", "frank-old-8")


def test_alias_add_makes_mail_follow_and_remove_stops_it(host, server, anna):
    out = pm(host, "alias", "add", "helpdesk@example.net", "anna")
    assert out.returncode == 0 and APPLIED in out.stdout, out
    subject = mc.unique_subject("to the helpdesk")
    assert mc.send_inbound(server, "someone@elsewhere.example", ["helpdesk@example.net"], subject) == {}
    mc.imap_find(server, *anna, subject)
    out = pm(host, "alias", "remove", "helpdesk@example.net")
    assert out.returncode == 0 and APPLIED in out.stdout, out
    # example.net has no catch-all: an unknown address is refused at RCPT time.
    code, text = mc.rcpt_reply(server, 25, "starttls", "someone@elsewhere.example", "helpdesk@example.net")
    assert code == 550, (code, text)


def test_mailbox_remove_is_refused_while_referenced_then_forced(host):
    assert pm(host, "mailbox", "add", "gina", input="gina-secret-10\n").returncode == 0
    assert pm(host, "alias", "add", "gina-team@example.org", "gina", "anna").returncode == 0
    assert pm(host, "catch-all", "set", "example.net", "gina").returncode == 0
    state = file_state(host)
    out = pm(host, "mailbox", "remove", "gina")
    assert out.returncode == 1, out
    assert "alias `gina-team@example.org` (target `gina`)" in out.stderr, out
    assert "the catch-all of `example.net` (target `gina`)" in out.stderr, out
    assert file_state(host) == state, "a refused remove changed the file"
    out = pm(host, "mailbox", "remove", "gina", "--force")
    assert out.returncode == 0 and APPLIED in out.stdout, out
    assert "the mail stored for `gina` stays in /var/vmail/gina" in out.stdout, out
    assert all(m["name"] != "gina" for m in json.loads(pm(host, "mailbox", "list", "--json").stdout))
    aliases = {a["address"]: a for a in json.loads(pm(host, "alias", "list", "--json").stdout)}
    assert aliases["gina-team@example.org"]["targets"] == ["anna"], aliases
    assert "@example.net" not in aliases, aliases


def test_an_edit_that_would_break_the_file_is_refused_and_nothing_changes(host):
    state = file_state(host)
    out = pm(host, "alias", "add", "lost@example.org", "nobody")
    assert out.returncode == 1, out
    assert f"{ACCOUNTS}:" in out.stderr and "there is no mailbox `nobody` to deliver to" in out.stderr, out
    out = pm(host, "mailbox", "add", "Bad!", input="whatever-11\n")
    assert out.returncode == 1 and "mailbox name `Bad!` is not valid" in out.stderr, out
    out = pm(host, "mailbox", "passwd", "nobody", input="whatever-11\n")
    assert out.returncode == 1 and "mailbox `nobody` does not exist" in out.stderr, out
    assert file_state(host) == state, "a refused edit changed the file"
    assert status(host)["accounts"]["errors"] == []


def test_a_concurrent_edit_is_not_clobbered(host):
    # The command reads the file, then blocks reading the password from a fifo;
    # meanwhile someone else saves the file. The command must then refuse.
    script = f"""
set -e
rm -f /tmp/pw && mkfifo /tmp/pw
postmaster mailbox add hank </tmp/pw >/tmp/out 2>&1 & pid=$!
exec 3>/tmp/pw
# Blocked in read(0, ...): the file has been read by then.
for i in $(seq 200); do
  case "$(cat /proc/$pid/syscall 2>/dev/null)" in "0 0x0 "*) break;; esac
  sleep 0.05
done
echo '# someone else was here' >> {ACCOUNTS}
echo hank-secret-12 >&3
exec 3>&-
rc=0; wait $pid || rc=$?
cat /tmp/out; echo "rc=$rc"
"""
    out = host.bed.run(["sh", "-c", script])
    assert "rc=3" in out.stdout and "changed on disk while this command ran" in out.stdout, out
    text, _ = file_state(host)
    assert text.endswith("# someone else was here\n") and "hank" not in text, text
