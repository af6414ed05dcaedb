"""What postmaster.service may do, and nothing more, proven inside the bed.

The units (units/) are installed by `postmaster setup` (mailhost.boot), the same files
units/install-debian.sh installs (test_install_is_idempotent runs it over them); the
daemon itself is not needed: the tests act as its user `postmaster` (setpriv), and
run probes inside a copy of its unit, so they hold whether or not the daemon runs.

- polkit: user postmaster may reload and restart postfix, dovecot, rspamd and the
  TLS front, and is refused everything else, outright (no authentication challenge).
- D-Bus: only postmaster may own io.postmaster.Supervisor1; root and group
  postmaster-admin may call it; nobody else may send it anything.
- The unit's sandbox: no capabilities, read-only system, no mail, no other
  processes, only the address families and system calls it needs; and
  `postmaster apply` works in it.
- postmaster-acme.socket: off by default, and hands port 80 to the daemon by name.
- Users, groups and directories from sysusers.d and tmpfiles.d.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

import mailhost

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("postfix.service", "dovecot.service", "rspamd.service", "postmaster-tls.service")
UNIT = "/usr/local/lib/systemd/system/postmaster.service"
SOCKET = "/usr/local/lib/systemd/system/postmaster-acme.socket"
BUS_NAME = "io.postmaster.Supervisor1"
BUS_PATH = "/io/postmaster/Supervisor1"
SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
MANAGER = "org.freedesktop.systemd1.Manager"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
# Scratch space in the bed for this module's scripts and probe output.
WORK = "/run/postmaster-privileges"
# Users the tests create: an admin, and someone with no business with postmaster.
ADMIN = "pm-test-admin"
STRANGER = "pm-test-stranger"


def as_user(user: str, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]


def bus_call(host, user: str, dest: str, path: str, method: str, *args: str) -> str | None:
    """dbus-send as `user`: None if the call succeeded, else the D-Bus error name."""
    res = host.bed.run(as_user(user, ["dbus-send", "--system", "--print-reply", f"--dest={dest}", path, method, *args]))
    if res.returncode == 0:
        return None
    m = re.search(r"^Error ([\w.]+):", res.stderr, re.M)
    assert m, f"dbus-send {method} as {user}: exit {res.returncode}, {res.stderr!r}"
    return m.group(1)


def manager(host, user: str, method: str, *args: str) -> str | None:
    return bus_call(host, user, *SYSTEMD, f"{MANAGER}.{method}", *args)


def wait_jobs_done(host, unit: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while host.bed.systemctl("list-jobs", "--no-legend", "--plain", unit, check=False).strip():
        assert time.monotonic() < deadline, f"{unit} still has jobs after {timeout}s"
        time.sleep(0.05)


def wait_mail_host_up(host) -> None:
    for unit in SERVICES:
        wait_jobs_done(host, unit)
        host.bed.wait_active(unit)
    for port in mailhost.PORTS:
        host.bed.wait_port(port)
    # rspamd runs (Type=simple) seconds before it has loaded its rules and set up
    # its signal handlers: a SIGHUP (its reload) before that ends it.
    mailhost.wait_for_signer(host.bed)


def journal_cursor(host) -> str:
    out = host.bed.run(["journalctl", "--lines=0", "--show-cursor", "--quiet"], check=True).stdout
    return out.strip().removeprefix("-- cursor: ")


def journal_since(host, cursor: str, unit: str) -> str:
    return host.bed.run(["journalctl", "--no-pager", "-o", "cat", f"--after-cursor={cursor}", "-u", unit]).stdout


def ensure_user(host, name: str, groups: str | None = None) -> None:
    if host.bed.run(["id", name]).returncode != 0:
        extra = ["--groups", groups] if groups else []
        host.bed.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", *extra, name], check=True)


@pytest.fixture(scope="module")
def units(host) -> str:
    """units/install-debian.sh, from /bed/units (mailhost.prepare() fills it).

    `postmaster setup` installed the units when the bed booted. Where it did not,
    install them from this checkout with the script."""
    script = "/bed/units/install-debian.sh"
    if not host.bed.path(UNIT).exists():
        copy = host.bed.path("/run/postmaster-units")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(REPO / "units", copy)
        script = "/run/postmaster-units/install-debian.sh"
        host.bed.run([script, "/usr/local/bin/postmaster"], check=True)
    host.bed.path(WORK).mkdir(exist_ok=True)
    ensure_user(host, ADMIN, "postmaster-admin")
    ensure_user(host, STRANGER)
    wait_mail_host_up(host)
    return script


# --- The unit files ------------------------------------------------------------------


def test_units_verify_clean_and_are_hardened(host, units):
    res = host.bed.run(["systemd-analyze", "verify", UNIT, SOCKET])
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res
    out = host.bed.run(["systemd-analyze", "security", "--no-pager", "postmaster.service"], check=True).stdout
    m = re.search(r"Overall exposure level for postmaster\.service: ([\d.]+)", out)
    assert m, out
    # 1.4 when written (systemd 257): what is left is the network, real user ids
    # (chown to group dovecot), no IP allow list (ACME), and chown() itself.
    assert float(m.group(1)) <= 1.5, out


TLS_FRONT = "/usr/local/lib/systemd/system/postmaster-tls.service"
TLS_SOCKET = "/usr/local/lib/systemd/system/postmaster-tls.socket"


def test_the_tls_front_is_hardened_and_reads_only_the_pair(host, units):
    """postmaster-tls.service: its own user, no capabilities, nothing writable; of
    postmaster's files only the installed pair (group postmaster-tls), never the
    accounts file or the DKIM keys."""
    b = host.bed
    res = b.run(["systemd-analyze", "verify", TLS_FRONT, TLS_SOCKET])
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res
    out = b.run(["systemd-analyze", "security", "--no-pager", "postmaster-tls.service"], check=True).stdout
    m = re.search(r"Overall exposure level for postmaster-tls\.service: ([\d.]+)", out)
    assert m, out
    print(m.group(0))  # the figure, for `pytest -rP`
    # 1.1 when written (systemd 257): what is left is the network it serves.
    assert float(m.group(1)) <= 1.2, out
    assert b.is_active("postmaster-tls.service"), b.journal("postmaster-tls.service", lines=30)
    pid = b.main_pid("postmaster-tls.service")
    status = b.run(["cat", f"/proc/{pid}/status"], check=True).stdout
    assert int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16) == 0, status
    user = b.run(["ps", "-o", "user=", "-p", str(pid)], check=True).stdout.strip()
    assert user == "postmaster-tls", user
    pair = b.run(["stat", "-c", "%U:%G %a", "/var/lib/postmaster/tls/pair.pem"], check=True).stdout.strip()
    assert pair == "postmaster:postmaster-tls 640", pair
    assert b.run(as_user("postmaster-tls", ["head", "-c1", "/var/lib/postmaster/tls/pair.pem"])).returncode == 0
    # (head reads the file; ls lists the directory: both need more than a stat.)
    # (The passwd-file, not the accounts file: other tests rewrite that one with
    # their umask, and only a boot's tmpfiles puts its mode back.)
    for secret, read in (("/var/lib/postmaster/generated/dovecot/users", ["head", "-c1"]),
                         ("/var/lib/postmaster/dkim", ["ls"])):
        assert b.path(secret).exists(), secret
        res = b.run(as_user("postmaster-tls", [*read, secret]))
        assert res.returncode != 0, f"postmaster-tls reads {secret}: {res.stdout}"


# Debian 13 as shipped: dovecot.service 8.5, postfix.service (and postfix@-.service) 3.9.
# With units/{dovecot,postfix}-hardening.conf (systemd 257): 2.8 and 2.7. What is left
# is a root master (both must bind ports below 1024, chroot and become other users),
# the network, and their system calls for setuid, chown and chroot.
MAIL_DAEMON_EXPOSURE = {"dovecot.service": 3.0, "postfix.service": 2.8, "postfix@-.service": 2.8}


@pytest.mark.parametrize("unit", sorted(MAIL_DAEMON_EXPOSURE))
def test_mail_daemons_are_hardened_and_still_serve(host, units, unit):
    """The drop-ins are loaded and lower the exposure; the rest of this session's
    scenarios (mail flow, logins, DKIM, inbound checks) run under them."""
    shown = host.bed.systemctl("show", "-p", "DropInPaths", unit)
    assert "50-postmaster-hardening.conf" in shown, shown
    out = host.bed.run(["systemd-analyze", "security", "--no-pager", unit], check=True).stdout
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", out)
    assert m, out
    print(m.group(0))  # the figure, for `pytest -rP`
    assert float(m.group(1)) <= MAIL_DAEMON_EXPOSURE[unit], out
    if unit != "postfix@-.service":  # the instance is not what Debian 13 runs
        assert host.bed.is_active(unit), host.bed.journal(unit, lines=30)
        # The root master kept only what it needs: no CAP_SYS_ADMIN, no CAP_CHOWN for postfix.
        pid = host.bed.main_pid(unit)
        status = host.bed.run(["cat", f"/proc/{pid}/status"], check=True).stdout
        bounding = int(re.search(r"^CapBnd:\s*([0-9a-f]+)", status, re.M).group(1), 16)
        assert not bounding & (1 << 21), f"{unit} keeps CAP_SYS_ADMIN: {bounding:x}"
        if unit == "postfix.service":
            # dovecot keeps the right to run postdrop (setgid): vacation replies.
            assert re.search(r"^NoNewPrivs:\s*1", status, re.M), status
            assert not bounding & (1 << 0), f"postfix keeps CAP_CHOWN: {bounding:x}"


def test_install_is_idempotent(host, units):
    res = host.bed.run([units, "/usr/local/bin/postmaster"], check=True)
    assert "installed " not in res.stdout, res.stdout
    assert host.bed.systemctl("is-enabled", "postmaster.service", check=False).strip() in ("disabled", "enabled")


# --- polkit: the rule itself, action by action -----------------------------------------------

VERBS = ("reload", "restart", "try-restart", "reload-or-restart", "reload-or-try-restart", "start", "stop", "kill")
UNITS_ASKED = ("postfix.service", "dovecot.service", "rspamd.service", "postmaster-tls.service", "dbus.service",
               "systemd-journald.service", "postmaster.service")
ALLOWED = {(u, v) for u in SERVICES for v in ("reload", "restart", "try-restart", "reload-or-restart")}
OTHER_ACTIONS = (
    "org.freedesktop.systemd1.reload-daemon",
    "org.freedesktop.systemd1.manage-unit-files",
    "org.freedesktop.login1.reboot",
    "org.freedesktop.hostname1.set-hostname",
)


def pkcheck_matrix(host, user: str) -> dict:
    """pkcheck's answer (0 yes, 1 no, 2 challenge) for a process of `user`, asked by
    root (only root may pass details such as systemd's unit and verb)."""
    script = "\n".join(
        [f"setpriv --reuid={user} --regid={user} --init-groups sleep 60 </dev/null >/dev/null 2>&1 & pid=$!", "sleep 0.2"]
        + [f"pkcheck --action-id org.freedesktop.systemd1.manage-units --process $pid --detail unit {u} --detail verb {v} >/dev/null 2>&1; echo \"{u} {v} $?\""
           for u in UNITS_ASKED for v in VERBS]
        + [f"pkcheck --action-id {a} --process $pid >/dev/null 2>&1; echo \"{a} - $?\"" for a in OTHER_ACTIONS]
        + ["kill $pid"]
    )
    out = host.bed.run(["sh", "-c", script], check=True).stdout
    return {(a, b): int(c) for a, b, c in (line.split() for line in out.splitlines())}


def test_polkit_grants_postmaster_exactly_reload_and_restart_of_the_mail_daemons(host, units):
    got = pkcheck_matrix(host, "postmaster")
    want = {(u, v): 0 if (u, v) in ALLOWED else 1 for u in UNITS_ASKED for v in VERBS}
    want |= {(a, "-"): 1 for a in OTHER_ACTIONS}  # 1: refused outright, no challenge
    assert got == want, {k: (got.get(k), w) for k, w in want.items() if got.get(k) != w}


def test_polkit_rule_concerns_only_postmaster(host, units):
    # Anyone else gets polkit's defaults: authenticate as an admin (2), never a yes.
    got = pkcheck_matrix(host, STRANGER)
    assert set(got.values()) == {2}, got


# --- systemd over D-Bus, as the daemon calls it ---------------------------------------------


@pytest.mark.parametrize("unit", SERVICES)
def test_postmaster_reloads_the_mail_daemons_without_restarting_them(host, units, unit):
    pid = host.bed.main_pid(unit)
    assert pid > 0
    cursor = journal_cursor(host)
    assert manager(host, "postmaster", "ReloadUnit", f"string:{unit}", "string:replace") is None
    wait_jobs_done(host, unit)
    # systemctl waits for the job's end: as the admin's tool would.
    res = host.bed.run(as_user("postmaster", ["systemctl", "reload", unit]))
    assert res.returncode == 0, res.stderr
    deadline = time.monotonic() + 5  # journald may lag a moment behind
    while journal_since(host, cursor, unit).count(f"Reloaded {unit}") < 2:
        assert time.monotonic() < deadline, journal_since(host, cursor, unit)
        time.sleep(0.05)
    assert host.bed.main_pid(unit) == pid, f"{unit} was restarted, not reloaded"
    assert host.bed.is_active(unit)


@pytest.mark.parametrize("method", ["RestartUnit", "TryRestartUnit"])
@pytest.mark.parametrize("unit", SERVICES)
def test_postmaster_restarts_the_mail_daemons(host, units, unit, method):
    pid = host.bed.main_pid(unit)
    assert manager(host, "postmaster", method, f"string:{unit}", "string:replace") is None
    wait_mail_host_up(host)
    assert host.bed.main_pid(unit) not in (0, pid), f"{method} did not restart {unit}"


@pytest.mark.parametrize("unit", SERVICES)
def test_reload_or_restart_reloads_a_reloadable_unit(host, units, unit):
    pid = host.bed.main_pid(unit)
    assert manager(host, "postmaster", "ReloadOrRestartUnit", f"string:{unit}", "string:replace") is None
    wait_jobs_done(host, unit)
    assert host.bed.main_pid(unit) == pid


DENIED_CALLS = [
    ("StopUnit", "string:postfix.service", "string:replace"),
    ("StopUnit", "string:dovecot.service", "string:replace"),
    ("StartUnit", "string:postfix.service", "string:replace"),
    ("KillUnit", "string:dovecot.service", "string:all", "int32:15"),
    ("ResetFailedUnit", "string:postfix.service"),
    ("ReloadOrTryRestartUnit", "string:postfix.service", "string:replace"),
    ("ReloadUnit", "string:dbus.service", "string:replace"),
    ("RestartUnit", "string:systemd-journald.service", "string:replace"),
    ("StopUnit", "string:polkit.service", "string:replace"),
    ("ReloadUnit", "string:postmaster.service", "string:replace"),
    ("StartUnit", "string:postmaster-acme.socket", "string:replace"),
    ("EnableUnitFiles", "array:string:postmaster-acme.socket", "boolean:false", "boolean:false"),
    ("DisableUnitFiles", "array:string:postfix.service", "boolean:false"),
    ("MaskUnitFiles", "array:string:dovecot.service", "boolean:true", "boolean:false"),
    ("Reload",),
    ("Reexecute",),
]


@pytest.fixture
def mail_host_kept(host):
    """Should a refusal fail, put postfix and dovecot back for the tests after this."""
    yield
    for unit in SERVICES:
        if host.bed.systemctl("is-enabled", unit, check=False).strip() == "masked":
            host.bed.systemctl("unmask", unit)
        if not host.bed.is_active(unit):
            host.bed.systemctl("start", unit, check=False)
    wait_mail_host_up(host)


@pytest.mark.parametrize("call", DENIED_CALLS, ids=lambda c: " ".join(a.split(":", 1)[-1] for a in c))
def test_postmaster_is_refused_everything_else(host, units, mail_host_kept, call):
    pids = {u: host.bed.main_pid(u) for u in SERVICES}
    assert manager(host, "postmaster", *call) == ACCESS_DENIED
    assert {u: host.bed.main_pid(u) for u in SERVICES} == pids
    states = {u: host.bed.systemctl("is-active", u, check=False).strip() for u in SERVICES}
    assert all(state in ("active", "reloading") for state in states.values()), (
        states, host.bed.journal(lines=40))


def test_refused_through_unit_objects_and_properties_too(host, units):
    path = host.bed.run(["busctl", "call", *SYSTEMD, MANAGER, "GetUnit", "s", "postfix.service"], check=True).stdout.split('"')[1]
    assert bus_call(host, "postmaster", SYSTEMD[0], path, "org.freedesktop.systemd1.Unit.Stop", "string:replace") == ACCESS_DENIED
    assert bus_call(host, "postmaster", SYSTEMD[0], path, "org.freedesktop.systemd1.Unit.Reload", "string:replace") is None
    wait_jobs_done(host, "postfix.service")
    # SetUnitProperties takes a(sv), which dbus-send cannot write.
    res = host.bed.run(as_user("postmaster", ["busctl", "call", *SYSTEMD, MANAGER, "SetUnitProperties",
                                              "sba(sv)", "postfix.service", "true", "1", "CPUWeight", "t", "50"]))
    assert res.returncode != 0 and "Access denied" in res.stderr, res


@pytest.mark.parametrize("argv", [
    ["systemctl", "stop", "postfix.service"],
    ["systemctl", "start", "postmaster-acme.socket"],
    ["systemctl", "enable", "postmaster-acme.socket"],
    ["systemctl", "daemon-reload"],
], ids=" ".join)
def test_systemctl_as_postmaster_is_refused(host, units, mail_host_kept, argv):
    res = host.bed.run(as_user("postmaster", argv))
    assert res.returncode != 0 and "Access denied" in res.stderr, res
    assert all(host.bed.is_active(u) for u in SERVICES)
    assert not host.bed.is_active("postmaster-acme.socket")


# --- postmaster's own bus name -----------------------------------------------------------------

# A stand-in for the daemon: a minimal D-Bus client (standard library only) that
# asks for a name and answers every method call with one string. `--once` only asks.
FAKE_OWNER = r'''
import os, socket, struct, sys

def pad(b, n):
    return b + b"\0" * (-len(b) % n)

def string(b, s):
    s = s.encode()
    return pad(b, 4) + struct.pack("<I", len(s)) + s + b"\0"

def sig(b, s):
    return b + bytes([len(s)]) + s.encode() + b"\0"

def message(kind, serial, fields, body_sig="", body=b""):
    if body_sig:
        fields = fields + [(8, "g", body_sig)]
    arr = b""
    for code, t, value in fields:
        arr = sig(pad(arr, 8) + bytes([code]), t)
        arr = string(arr, value) if t in "so" else sig(arr, value) if t == "g" else pad(arr, 4) + struct.pack("<I", value)
    head = b"l" + bytes([kind, 0, 1]) + struct.pack("<III", len(body), serial, len(arr))
    return pad(head + arr, 8) + body

def parse(data):
    if len(data) < 16:
        return None
    body_len, serial, arr_len = struct.unpack_from("<III", data, 4)
    end = 16 + arr_len
    total = end + (-end % 8) + body_len
    if len(data) < total:
        return None
    fields, i = {}, 16
    while i < end:
        i += -i % 8
        code, n = data[i], data[i + 1]
        t = data[i + 2:i + 2 + n].decode()
        i += 3 + n
        if t in "so":
            i += -i % 4
            (n,) = struct.unpack_from("<I", data, i)
            fields[code] = data[i + 4:i + 4 + n].decode()
            i += 5 + n
        elif t == "g":
            fields[code] = data[i + 1:i + 1 + data[i]].decode()
            i += 2 + data[i]
        else:
            i += -i % 4
            (fields[code],) = struct.unpack_from("<I", data, i)
            i += 4
    return data[1], serial, fields, data[end + (-end % 8):total], total

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect("/run/dbus/system_bus_socket")
s.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
assert s.recv(4096).startswith(b"OK")
s.sendall(b"BEGIN\r\n")
buf, serial = b"", 0

def recv():
    global buf
    while True:
        m = parse(buf)
        if m:
            buf = buf[m[4]:]
            return m
        chunk = s.recv(65536)
        if not chunk:
            sys.exit(5)
        buf += chunk

def call_bus(member, body_sig="", body=b""):
    global serial
    serial += 1
    s.sendall(message(1, serial, [(1, "o", "/org/freedesktop/DBus"), (2, "s", "org.freedesktop.DBus"),
                                  (3, "s", member), (6, "s", "org.freedesktop.DBus")], body_sig, body))
    while True:
        kind, _, fields, body, _ = recv()
        if fields.get(5) == serial:
            return (fields.get(4), body) if kind == 3 else (None, body)

call_bus("Hello")
error, body = call_bus("RequestName", "su", pad(string(b"", sys.argv[1]), 4) + struct.pack("<I", 4))
if error:
    print(error, flush=True)
    sys.exit(3)
code = struct.unpack_from("<I", body)[0]
print("owner" if code == 1 else f"RequestName {code}", flush=True)
if code != 1 or sys.argv[2:] == ["--once"]:
    sys.exit(0 if code == 1 else 4)
while True:
    kind, call_serial, fields, _, _ = recv()
    if kind == 1:
        serial += 1
        answer = f"fake {fields.get(2)}.{fields.get(3)}"
        s.sendall(message(2, serial, [(5, "u", call_serial), (6, "s", fields[7])], "s", string(b"", answer)))
'''


def name_has_owner(host) -> bool:
    out = host.bed.run(["busctl", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                        "NameHasOwner", "s", BUS_NAME], check=True).stdout
    return out.strip() == "b true"


@pytest.fixture(scope="module")
def supervisor_name(host, units):
    """Someone owns io.postmaster.Supervisor1: the daemon if it runs (then only calls
    that change nothing are made), else the stand-in, as user postmaster."""
    script = f"{WORK}/fake_owner.py"
    host.bed.path(script).write_text(FAKE_OWNER)
    if name_has_owner(host):
        yield "daemon"
        return
    host.bed.run(["systemd-run", "--quiet", "--unit=pm-test-fake-supervisor", "--uid=postmaster", "--gid=postmaster",
                  "--property=Type=exec", "python3", script, BUS_NAME], check=True)
    try:
        deadline = time.monotonic() + 10
        while not name_has_owner(host):
            assert time.monotonic() < deadline, host.bed.journal("pm-test-fake-supervisor.service")
            time.sleep(0.05)
        yield "fake"
    finally:
        host.bed.systemctl("stop", "pm-test-fake-supervisor.service", check=False)


@pytest.mark.parametrize("user", ["root", ADMIN, STRANGER, "postfix"])
def test_only_postmaster_may_own_the_name(host, supervisor_name, user):
    res = host.bed.run(as_user(user, ["python3", f"{WORK}/fake_owner.py", BUS_NAME, "--once"]))
    assert res.returncode == 3 and res.stdout.strip() == ACCESS_DENIED, res


def calls(supervisor_name) -> list[tuple[str, ...]]:
    safe = [
        (f"{BUS_NAME}.Status",),
        ("org.freedesktop.DBus.Introspectable.Introspect",),
        ("org.freedesktop.DBus.Peer.Ping",),
        ("org.freedesktop.DBus.Properties.GetAll", f"string:{BUS_NAME}"),
    ]
    acting = [(f"{BUS_NAME}.Reload",), (f"{BUS_NAME}.Renew", "boolean:false")]
    return safe + (acting if supervisor_name == "fake" else [])


@pytest.mark.parametrize("user", ["root", ADMIN])
def test_root_and_admins_may_call_it(host, supervisor_name, user):
    for call in calls(supervisor_name):
        assert bus_call(host, user, BUS_NAME, BUS_PATH, *call) is None, call
    # No writable properties, and nothing but its own and the standard interfaces.
    set_prop = ("org.freedesktop.DBus.Properties.Set", f"string:{BUS_NAME}", "string:X", "variant:string:y")
    assert bus_call(host, user, BUS_NAME, BUS_PATH, *set_prop) == ACCESS_DENIED
    assert bus_call(host, user, BUS_NAME, BUS_PATH, "org.example.Other.Method") == ACCESS_DENIED


@pytest.mark.parametrize("user", [STRANGER, "postfix", "dovecot"])
def test_nobody_else_may_send_it_anything(host, supervisor_name, user):
    every = [(f"{BUS_NAME}.Status",), (f"{BUS_NAME}.Reload",), (f"{BUS_NAME}.Renew", "boolean:true"),
             ("org.freedesktop.DBus.Introspectable.Introspect",), ("org.freedesktop.DBus.Peer.Ping",),
             ("org.freedesktop.DBus.Properties.GetAll", f"string:{BUS_NAME}")]
    for call in every:
        assert bus_call(host, user, BUS_NAME, BUS_PATH, *call) == ACCESS_DENIED, call


# --- The unit's sandbox ------------------------------------------------------------------------

# Runs as the ExecStart= of a copy of postmaster.service: everything the unit
# grants or withholds, seen from inside.
PROBE = r'''
import errno, grp, json, os, pwd, socket, subprocess

def err(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def read(p):
    return err(lambda: os.listdir(p) if os.path.isdir(p) else open(p, "rb").read(1))

def write(p):
    def f():
        with open(p, "w") as fh:
            fh.write("x")
    return err(f)

def unix_connect(p):
    def f():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(p)
        finally:
            s.close()
    return err(f)

def busctl(*args):
    p = subprocess.run(["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                        "org.freedesktop.systemd1.Manager", *args], capture_output=True, text=True)
    return "ok" if p.returncode == 0 else p.stderr.strip()

status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
marker = "postmaster-probe-" + str(os.getpid())
r = {
    "user": pwd.getpwuid(os.getuid()).pw_name,
    "group": grp.getgrgid(os.getgid()).gr_name,
    "groups": sorted(grp.getgrgid(g).gr_name for g in os.getgroups()),
    "status": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")},
    "read": {p: read(p) for p in [
        "/etc/postmaster/config.toml", "/etc/postmaster/accounts.toml", "/etc/letsencrypt/live/mail.example.org/privkey.pem",
        "/etc/postfix/main.cf", "/var/lib/postmaster/generated",
        "/etc/shadow", "/etc/ssl/private", "/etc/dovecot/private", "/var/vmail", "/var/spool/postfix", "/root", "/home"]},
    "unix": {p: unix_connect(p) for p in [
        "/run/dbus/system_bus_socket", "/run/dovecot/dict", "/run/dovecot/imap-hibernate", "/run/dovecot/stats-writer",
        "/run/dovecot/doveadm-server", "/run/dovecot/auth-master"]},
    "write": {p: write(p) for p in [
        "/var/lib/postmaster/" + marker, "/tmp/" + marker, "/var/tmp/" + marker,
        "/etc/postmaster/" + marker, "/etc/" + marker, "/usr/local/bin/" + marker, "/run/" + marker]},
    "marker": marker,
    "pid_owners": sorted({pwd.getpwuid(os.stat(f"/proc/{p}").st_uid).pw_name for p in os.listdir("/proc") if p.isdigit()}),
    "pid1_visible": os.path.exists("/proc/1/status"),
    "proc_sys": read("/proc/sys/kernel/hostname"),
    "connect": {str(p): err(lambda p=p: socket.create_connection(("127.0.0.1", p), timeout=5).close())
                for p in (25, 465, 587, 143, 993, 110, 995)},
    "families": {name: err(lambda fam=fam: socket.socket(fam, socket.SOCK_RAW).close())
                 for name, fam in [("AF_NETLINK", socket.AF_NETLINK), ("AF_PACKET", socket.AF_PACKET)]},
    "syscalls": {
        "chmod g+s": err(lambda: os.chmod("/var/lib/postmaster/" + marker, 0o2640)),
        "unshare(user)": err(lambda: os.unshare(os.CLONE_NEWUSER)),
        "setpriority": err(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5)),
    },
    "bus": {
        "ReloadUnit postfix.service": busctl("ReloadUnit", "ss", "postfix.service", "replace"),
        "StopUnit postfix.service": busctl("StopUnit", "ss", "postfix.service", "replace"),
    },
}
for d in ("/var/lib/postmaster/", "/tmp/", "/var/tmp/"):
    try:
        os.unlink(d + marker)
    except OSError:
        pass
print(json.dumps(r))
'''


def run_in_unit_sandbox(host, name: str, exec_start: str, environment: str = "") -> tuple[bool, str]:
    """Starts a copy of the installed postmaster.service, named `name`, that runs
    `exec_start` once; returns (succeeded, its output)."""
    unit_dir = host.bed.path("/run/systemd/system")
    (unit_dir / f"{name}.service").write_text(host.bed.path(UNIT).read_text())
    dropin = unit_dir / f"{name}.service.d"
    dropin.mkdir(exist_ok=True)
    out = f"{WORK}/{name}.out"
    (dropin / "probe.conf").write_text(
        "[Service]\nType=oneshot\nRestart=no\nWatchdogSec=0\nExecStart=\n"
        f"ExecStart={exec_start}\nStandardOutput=truncate:{out}\nStandardError=journal\n"
        + (f"Environment={environment}\n" if environment else "")
    )
    host.bed.systemctl("daemon-reload")
    try:
        ok = host.bed.run(["systemctl", "start", f"{name}.service"]).returncode == 0
        text = host.bed.path(out).read_text() if host.bed.path(out).exists() else ""
        if not ok:
            text += host.bed.journal(f"{name}.service", lines=20)
        return ok, text
    finally:
        (unit_dir / f"{name}.service").unlink()
        shutil.rmtree(dropin)
        host.bed.systemctl("daemon-reload")
        host.bed.systemctl("reset-failed", f"{name}.service", check=False)


@pytest.fixture(scope="module")
def sandbox(host, units) -> dict:
    host.bed.path(f"{WORK}/probe.py").write_text(PROBE)
    ok, out = run_in_unit_sandbox(host, "pm-test-probe", f"/usr/bin/python3 {WORK}/probe.py")
    assert ok, out
    wait_jobs_done(host, "postfix.service")
    return json.loads(out)


def test_sandbox_identity_and_privileges(sandbox):
    assert (sandbox["user"], sandbox["group"], sandbox["groups"]) == ("postmaster", "postmaster", ["postmaster"])
    st = sandbox["status"]
    assert {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), "0000000000000000")
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    assert sandbox["syscalls"] == {"chmod g+s": "EPERM", "unshare(user)": "EPERM", "setpriority": "EPERM"}


def test_sandbox_files(sandbox):
    assert sandbox["read"] == {
        "/etc/postmaster/config.toml": "ok", "/etc/postmaster/accounts.toml": "ok", "/etc/letsencrypt/live/mail.example.org/privkey.pem": "ok",
        "/etc/postfix/main.cf": "ok", "/var/lib/postmaster/generated": "ok",
        "/etc/shadow": "EACCES", "/etc/ssl/private": "EACCES", "/etc/dovecot/private": "EACCES",
        "/var/vmail": "EACCES", "/var/spool/postfix": "EACCES", "/root": "EACCES", "/home": "EACCES",
    }
    m = sandbox["marker"]
    write = {p.replace(m, "*"): e for p, e in sandbox["write"].items()}
    assert write == {
        "/var/lib/postmaster/*": "ok", "/tmp/*": "ok", "/var/tmp/*": "ok",
        "/etc/postmaster/*": "EACCES", "/etc/*": "EROFS", "/usr/local/bin/*": "EROFS", "/run/*": "EACCES",
    }
    # dovecot's internal sockets are group dovecot's; postmaster is not in it.
    assert sandbox["unix"] == {
        "/run/dbus/system_bus_socket": "ok", "/run/dovecot/dict": "EACCES", "/run/dovecot/imap-hibernate": "EACCES",
        "/run/dovecot/stats-writer": "EACCES", "/run/dovecot/doveadm-server": "EACCES", "/run/dovecot/auth-master": "EACCES",
    }


def test_sandbox_tmp_is_private(host, sandbox):
    assert not host.bed.path(f"/tmp/{sandbox['marker']}").exists()
    found = host.bed.run(["find", "/tmp", "/var/tmp", "-name", sandbox["marker"]]).stdout
    assert found == ""


def test_sandbox_sees_only_its_users_processes(sandbox):
    assert sandbox["pid_owners"] == ["postmaster"] and not sandbox["pid1_visible"], sandbox
    assert sandbox["proc_sys"] == "ENOENT"


def test_sandbox_network_and_bus(sandbox):
    assert set(sandbox["connect"].values()) == {"ok"}, sandbox["connect"]
    assert sandbox["families"] == {"AF_NETLINK": "ok", "AF_PACKET": "EAFNOSUPPORT"}
    assert sandbox["bus"]["ReloadUnit postfix.service"] == "ok"
    assert "Access denied" in sandbox["bus"]["StopUnit postfix.service"]


PROBE_STATE = "/var/lib/postmaster/pm-test-apply"


@pytest.fixture(scope="module")
def sandboxed_apply(host, units):
    """`postmaster apply` in the unit's sandbox, into a state directory of its own
    (made the way tmpfiles.d makes the real one), so the live files stay as they are."""
    config = host.bed.path("/etc/postmaster/config.toml").read_text()
    host.bed.path(f"{WORK}/apply.toml").write_text(f'state_dir = "{PROBE_STATE}"\n' + config)
    host.bed.run(["sh", "-c", f"""set -e
        install -d -o postmaster -g postmaster -m 0751 {PROBE_STATE} {PROBE_STATE}/generated
        install -d -o postmaster -g postmaster -m 0755 {PROBE_STATE}/generated/postfix
        install -d -o postmaster -g dovecot -m 2750 {PROBE_STATE}/generated/dovecot
        install -d -o postmaster -g _rspamd -m 2750 {PROBE_STATE}/dkim"""], check=True)
    try:
        ok, out = run_in_unit_sandbox(host, "pm-test-apply", "/usr/local/bin/postmaster apply",
                                      f"POSTMASTER_CONFIG={WORK}/apply.toml")
        yield ok, out
    finally:
        host.bed.run(["rm", "-rf", PROBE_STATE])


def test_apply_works_in_the_sandbox(host, sandboxed_apply):
    ok, out = sandboxed_apply
    assert ok, out
    users = f"{PROBE_STATE}/generated/dovecot/users"
    stat = host.bed.run(["stat", "-c", "%U:%G %a", users], check=True).stdout.strip()
    assert stat == "postmaster:dovecot 640"
    assert host.bed.run(as_user("dovecot", ["head", "-c1", users])).returncode == 0
    assert host.bed.run(as_user(STRANGER, ["head", "-c1", users])).returncode != 0
    # The compiled maps answer (postfix's daemons open them as root).
    q = host.bed.run(["postmap", "-q", "thomas@example.org", f"lmdb:{PROBE_STATE}/generated/postfix/virtual_mailbox"])
    assert q.returncode == 0 and q.stdout.strip(), q
    # The first DKIM keys: readable by rspamd through the directory's group, by nobody else.
    keys = host.bed.run(["sh", "-c", f"ls {PROBE_STATE}/dkim/*.key"], check=True).stdout.split()
    assert len(keys) == 2, keys  # example.org and example.net
    for key in keys:
        assert host.bed.run(["stat", "-c", "%U:%G %a", key], check=True).stdout.strip() == "postmaster:_rspamd 640"
        assert host.bed.run(as_user("_rspamd", ["head", "-c1", key])).returncode == 0
        assert host.bed.run(as_user(STRANGER, ["head", "-c1", key])).returncode != 0


def test_maps_compiled_in_the_sandbox_are_readable_by_postfix(host, sandboxed_apply):
    assert sandboxed_apply[0]
    q = host.bed.run(as_user("postfix", ["postmap", "-q", "thomas@example.org",
                                         f"lmdb:{PROBE_STATE}/generated/postfix/virtual_mailbox"]))
    assert q.returncode == 0, q.stderr


# --- ACME's port 80 ----------------------------------------------------------------------------


def show(host, unit: str, *props: str) -> dict:
    out = host.bed.systemctl("show", unit, *(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


def port_80_listening(host) -> bool:
    return ":80 " in host.bed.run(["ss", "-Hltn", "sport", "=", ":80"]).stdout + " "


def test_acme_socket_is_off_and_the_daemon_does_not_pull_it_in(host, units):
    sock = show(host, "postmaster-acme.socket", "UnitFileState", "ActiveState", "Triggers", "FileDescriptorName", "Listen")
    assert sock == {"UnitFileState": "disabled", "ActiveState": "inactive", "Triggers": "postmaster.service",
                    "FileDescriptorName": "acme-http", "Listen": "[::]:80 (Stream)"}
    # (After= it is, once loaded: the socket's Service= orders it first, harmlessly.)
    service = show(host, "postmaster.service", "Wants", "Requires", "Requisite", "BindsTo", "Upholds")
    assert all("postmaster-acme.socket" not in v for v in service.values()), service
    assert not port_80_listening(host)


def test_acme_socket_hands_port_80_to_the_daemon_by_name(host, units):
    # The unit is borrowed for a probe that prints what it is handed: the daemon
    # stops meanwhile and is started again afterwards.
    host.bed.systemctl("stop", "postmaster.service")
    fds = (
        "import os, socket, json; n = int(os.environ.get('LISTEN_FDS', '0')); s = socket.socket(fileno=3) if n else None; "
        "print(json.dumps({'names': os.environ.get('LISTEN_FDNAMES'), 'n': n, "
        "'addr': list(s.getsockname()[:2]) if s else None, "
        "'listening': bool(s and s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))})); s and s.detach()"
    )
    host.bed.path(f"{WORK}/fds.py").write_text(fds + "\n")
    dropin = host.bed.path("/run/systemd/system/postmaster.service.d/pm-test-fds.conf")
    dropin.parent.mkdir(exist_ok=True)
    dropin.write_text(
        "[Service]\nType=oneshot\nRestart=no\nWatchdogSec=0\nExecStart=\n"
        f"ExecStart=/usr/bin/python3 {WORK}/fds.py\nStandardOutput=truncate:{WORK}/fds.out\n")
    host.bed.systemctl("daemon-reload")
    try:
        host.bed.systemctl("start", "postmaster.service")
        alone = json.loads(host.bed.path(f"{WORK}/fds.out").read_text())
        assert alone["n"] == 0 and not port_80_listening(host), "starting the daemon must not bind port 80"
        host.bed.systemctl("start", "postmaster-acme.socket")
        assert port_80_listening(host)
        host.bed.systemctl("start", "postmaster.service")
        got = json.loads(host.bed.path(f"{WORK}/fds.out").read_text())
        assert got == {"names": "acme-http", "n": 1, "addr": ["::", 80], "listening": True}
    finally:
        host.bed.systemctl("stop", "postmaster-acme.socket", "postmaster.service", check=False)
        dropin.unlink()
        if not any(dropin.parent.iterdir()):
            dropin.parent.rmdir()
        host.bed.systemctl("daemon-reload")
        host.bed.systemctl("reset-failed", "postmaster.service", check=False)
        host.bed.systemctl("start", "postmaster.service")
    assert not port_80_listening(host)
    assert host.bed.is_active("postmaster.service")


# --- Users, groups, directories ----------------------------------------------------------------


def test_users_groups_and_directories(host, units):
    assert host.bed.run(["id", "-nG", "postmaster"], check=True).stdout.split() == ["postmaster"]
    assert host.bed.run(["getent", "group", "postmaster-admin"]).returncode == 0
    # The TLS front's user: in its own group only (the pair's), no shell.
    assert host.bed.run(["id", "-nG", "postmaster-tls"], check=True).stdout.split() == ["postmaster-tls"]
    modes = host.bed.run(["stat", "-c", "%n %U:%G %a",
                          "/var/lib/postmaster", "/var/lib/postmaster/generated", "/var/lib/postmaster/generated/postfix",
                          "/var/lib/postmaster/generated/dovecot", "/var/lib/postmaster/tls",
                          "/var/lib/postmaster/dkim", "/etc/postmaster/accounts.toml"], check=True).stdout.splitlines()
    assert modes == [
        "/var/lib/postmaster postmaster:postmaster 751",
        "/var/lib/postmaster/generated postmaster:postmaster 751",
        "/var/lib/postmaster/generated/postfix postmaster:postmaster 755",
        "/var/lib/postmaster/generated/dovecot postmaster:dovecot 2750",
        "/var/lib/postmaster/tls postmaster:postmaster-tls 2750",
        "/var/lib/postmaster/dkim postmaster:_rspamd 2750",
        "/etc/postmaster/accounts.toml root:postmaster 640",
    ]
    # postfix and dovecot reach what they read; others cannot even list the state.
    generated = "/var/lib/postmaster/generated"
    assert host.bed.run(as_user("postfix", ["ls", f"{generated}/postfix"])).returncode == 0
    assert host.bed.run(as_user("dovecot", ["head", "-c1", f"{generated}/dovecot/users"])).returncode == 0
    for path in ("/var/lib/postmaster", generated, f"{generated}/dovecot", "/var/lib/postmaster/tls",
                 "/var/lib/postmaster/dkim"):
        assert host.bed.run(as_user(STRANGER, ["ls", path])).returncode != 0, path
    assert host.bed.run(as_user(STRANGER, ["head", "-c1", "/etc/postmaster/accounts.toml"])).returncode != 0
