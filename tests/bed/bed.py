"""The postmaster test bed: a real Debian 13 host with systemd, postfix, dovecot and
pebble, booted with systemd-nspawn from a cached rootfs (see rootfs.sh).

    from bed import Bed
    with Bed(bed_input_dir="/tmp/scenario", name="pmbed") as bed:
        bed.run(["systemctl", "is-active", "postfix"], check=True)
        bed.wait_port(587)

`bed_input_dir` is bind-mounted read-only at /bed; if it holds an executable
setup.sh, postmaster-bed-setup.service runs it before postfix and dovecot start.

Teardown always happens: on leaving the `with` block, on SIGINT/SIGTERM (turned into
exceptions that unwind through it), at interpreter exit (atexit) and, if this
process is killed outright, nspawn gets SIGTERM from the kernel (setpriv --pdeathsig).
Whatever is still left after that, cleanup.sh removes; the next Bed of the same name
runs it first.

Python 3.11 standard library only. Needs root and, on the host: systemd-container,
iproute2, util-linux, zstd, debootstrap.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
STATE_ROOT = Path("/run/postmaster-bed")
CGROUP_PREFIX = "postmaster-bed-"
# Host bridges that beds create (Bed(own_bridge=True)) carry this prefix: cleanup.sh
# deletes any such bridge that no live bed records.
BRIDGE_PREFIX = "pmbr-"
# The host's PID 1 is not systemd: nspawn must be given a cgroup of its own in the
# named v1 hierarchy and in the unified one, or it falls back to /payload at the
# root, which the next run then trips over.
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
# Commands inside the bed get a clean environment, not the caller's.
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class BedError(RuntimeError):
    """The bed could not be built, booted or asked something."""


def log(msg: str) -> None:
    print(f"bed: {msg}", file=sys.stderr, flush=True)


def ensure_rootfs(prune: bool = False) -> Path:
    """Build or reuse the cached rootfs (rootfs.sh) and return its directory.

    rootfs.sh reports cache hit/miss and timing on stderr, which is passed through.
    """
    cmd = [str(HERE / "rootfs.sh")] + (["--prune"] if prune else [])
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if res.returncode != 0 or not res.stdout.strip():
        raise BedError(f"rootfs.sh failed (exit {res.returncode})")
    return Path(res.stdout.strip().splitlines()[-1])


def cleanup(*names: str, quiet: bool = False) -> None:
    """Run cleanup.sh for these machine names (all beds when none is given)."""
    cmd = [str(HERE / "cleanup.sh")] + (["--quiet"] if quiet else []) + list(names)
    subprocess.run(cmd, check=False)


def leftovers(name: str, rootfs: Path | None = None, veth: str | None = None,
              bridge: str | None = None) -> list[str]:
    """What of bed `name` is still on the host (empty list: nothing). Pass the
    rootfs to look for mounts below it, the veth if nspawn shortened its name, and
    the bridge the bed created, if it did (once cleaned up, nothing records it)."""
    found = []
    for pid, argv in _processes():
        if argv and argv[0].endswith("systemd-nspawn") and f"--machine={name}" in argv:
            found.append(f"nspawn process {pid}")
    for root in Path("/sys/fs/cgroup").iterdir():
        if (root / f"{CGROUP_PREFIX}{name}").exists():
            found.append(f"cgroup {root / (CGROUP_PREFIX + name)}")
    veth_file = STATE_ROOT / name / "veth"
    if veth is None:
        veth = veth_file.read_text().strip() if veth_file.exists() else _default_veth(name)
    if Path("/sys/class/net", veth).exists():
        found.append(f"interface {veth}")
    bridge_file = STATE_ROOT / name / "bridge"
    if bridge is None and bridge_file.exists():
        bridge = bridge_file.read_text().strip()
    if bridge and Path("/sys/class/net", bridge).exists():
        found.append(f"bridge {bridge}")
    for d in (STATE_ROOT / name, Path("/run/systemd/nspawn/propagate", name)):
        if d.exists():
            found.append(f"directory {d}")
    if rootfs is not None:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4]
            if target == str(rootfs) or target.startswith(f"{rootfs}/"):
                found.append(f"mount {target}")
    return found


def _default_veth(name: str, bridged: bool = False) -> str:
    # nspawn names the host side "ve-" + machine name ("vb-" when it joins a bridge);
    # Linux caps names at 15 bytes, and nspawn shortens longer ones (with a hash), so
    # the real name is looked up after boot and this is only the guess before that.
    return f"{'vb' if bridged else 've'}-{name}"[:15]


def _processes() -> Iterable[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        yield int(entry.name), [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, comm) of the direct children of `pid`."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # comm is in parentheses and may contain spaces: split after the last ')'.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            kids.append((int(entry.name), comm))
    return kids


class Bed:
    """One booted test bed. Use as a context manager, or call start()/stop()."""

    def __init__(
        self,
        bed_input_dir: str | os.PathLike | None = None,
        name: str = "pmbed",
        *,
        net: str = "10.231.0",
        host_id: int = 2,
        bridge: str | None = None,
        own_bridge: bool = False,
        dns: str | None = None,
        rootfs: str | os.PathLike | None = None,
        wait_ports: Sequence[int] = (25,),
        boot_timeout: float = 90.0,
        nspawn_args: Sequence[str] = (),
        init_args: Sequence[str] = (),
    ):
        """
        bed_input_dir: host directory bound read-only at /bed (setup.sh and whatever
            it installs); None binds nothing and the setup unit is skipped.
        name: machine name; also names the cgroups, the veth (ve-NAME) and the state
            dir /run/postmaster-bed/NAME. Two beds at once need two names and nets.
        net: first three octets of the bed's /24: host NET.1, container NET.host_id.
        host_id: last octet of the container's address (2 unless beds share a bridge).
        bridge: join this host bridge (nspawn --network-bridge) instead of getting a
            veth of its own; the host's address NET.1 is on the bridge, and every bed
            on it reaches the others directly (layer 2, no IP forwarding).
        own_bridge: create `bridge` (named pmbr-...) with NET.1/24 before booting and
            delete it at teardown; the bed that does must be the last one to stop.
        dns: the container's resolver (written to /etc/resolv.conf at sysinit);
            default: nameserver 127.0.0.1, where nothing answers.
        rootfs: an unpacked rootfs directory; default: ensure_rootfs().
        wait_ports: container TCP ports that must accept connections from the host
            before start() returns.
        nspawn_args: extra systemd-nspawn arguments (e.g. more --bind-ro=).
        init_args: arguments for the container's systemd, which reads them like a
            kernel command line (e.g. systemd.mask=rspamd.service).
        """
        if not name or len(name) > 64 or not all(c.isalnum() or c == "-" for c in name):
            raise ValueError(f"bad machine name {name!r}")
        self.name = name
        self.bed_input_dir = Path(bed_input_dir).resolve() if bed_input_dir else None
        if own_bridge and not (bridge and bridge.startswith(BRIDGE_PREFIX) and len(bridge) <= 15):
            raise ValueError(f"an own bridge needs a name {BRIDGE_PREFIX}... of at most 15 bytes, not {bridge!r}")
        if not 2 <= host_id <= 254:
            raise ValueError(f"bad host_id {host_id}")
        self.net = net
        self.host_ip = f"{net}.1"
        self.ip = f"{net}.{host_id}"
        self.bridge = bridge
        self.own_bridge = own_bridge
        self.dns = dns
        self.init_args = tuple(init_args)
        self.rootfs = Path(rootfs) if rootfs else None
        self.wait_ports = tuple(wait_ports)
        self.boot_timeout = boot_timeout
        self.nspawn_args = tuple(nspawn_args)
        self.state_dir = STATE_ROOT / name
        # Beside the state dir, not in it: kept after teardown for post-mortems,
        # overwritten by the next boot of the same name.
        self.log_path = STATE_ROOT / f"{name}.console.log"
        self.veth = _default_veth(name, bridged=bridge is not None)
        self.pid: int | None = None  # systemd-nspawn on the host
        self.pid1: int | None = None  # the container's systemd, as the host sees it
        self._proc: subprocess.Popen | None = None
        self._forwarders: list[Forwarder] = []
        self._old_handlers: dict[int, object] = {}
        self._lock_fd: int | None = None
        self._started = False

    # ---- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> "Bed":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Bed":
        """Boot the bed; returns when systemd is up and wait_ports accept.

        On any failure (or an interrupt) the bed is torn down before the exception
        propagates.
        """
        if self._started:
            raise BedError("already started")
        self._lock()
        self._started = True
        self._install_signal_handlers()
        atexit.register(self.stop)
        try:
            self._boot()
        except BaseException:
            self.stop()
            raise
        return self

    def _lock(self) -> None:
        # Held while the bed lives and released by the kernel when this process
        # dies, so traces of a bed whose lock is free are stale and safe to remove,
        # and a second Bed of the same name fails instead of tearing down the first.
        # (Popen's close_fds keeps it out of nspawn.)
        STATE_ROOT.mkdir(parents=True, exist_ok=True)
        fd = os.open(STATE_ROOT / f"{self.name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BedError(f"a bed named {self.name!r} is already running (lock {STATE_ROOT}/{self.name}.lock)") from None
        self._lock_fd = fd

    def _boot(self) -> None:
        t0 = time.monotonic()
        if any(self._trace_exists()):
            log(f"{self.name}: leftovers of an earlier run, cleaning up first")
            cleanup(self.name)
        if self.rootfs is None:
            self.rootfs = ensure_rootfs()
        t_rootfs = time.monotonic()

        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.own_bridge:
            self._create_bridge()
        cgroups = [h / f"{CGROUP_PREFIX}{self.name}" for h in CGROUP_HIERARCHIES]
        for cg in cgroups:
            cg.mkdir(exist_ok=True)

        # A shell (not preexec_fn, which is unsafe with threads, e.g. a Forwarder)
        # joins the cgroups and execs nspawn via setpriv, so that the kernel sends
        # nspawn SIGTERM (= clean poweroff) if this process dies without stop().
        join_and_exec = (
            "".join(f'echo $$ >"{cg}/cgroup.procs" && ' for cg in cgroups)
            + 'exec setpriv --pdeathsig TERM -- "$@"'
        )
        cmd = [
            "/bin/sh", "-c", join_and_exec, "sh",
            "systemd-nspawn",
            "--boot",
            # No systemd on the host: nspawn must neither register with machined nor
            # ask for a scope unit, or it dies with "Failed to open system bus".
            "--register=no",
            "--keep-unit",
            f"--directory={self.rootfs}",
            f"--machine={self.name}",
            # A fresh tmpfs layer over the shared, read-only-in-practice rootfs.
            "--volatile=overlay",
            *([f"--network-bridge={self.bridge}"] if self.bridge else ["--network-veth"]),
            f"--set-credential=pmbed.addr:{self.ip}/24",
            *([f"--set-credential=pmbed.dns:{self.dns}"] if self.dns else []),
            # provision.sh wrote resolv.conf (nameserver 127.0.0.1): keep it, never
            # the host's resolver. Keep the rootfs' UTC and journal to itself too.
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
            "--setenv=SYSTEMD_COLORS=0",  # a readable console log
            *([f"--bind-ro={self.bed_input_dir}:/bed"] if self.bed_input_dir else []),
            *self.nspawn_args,
            # Positional, after every option: nspawn hands them to the container's init.
            *self.init_args,
        ]
        with open(self.log_path, "wb") as console:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                # Own session: a terminal's Ctrl-C reaches only us, and stop() decides.
                start_new_session=True,
            )
        self.pid = self._proc.pid
        (self.state_dir / "pid").write_text(f"{self.pid}\n")

        self.pid1 = self._find_pid1(timeout=30)
        self._setup_host_veth()
        state = self.wait_running(self.boot_timeout)
        t_running = time.monotonic()
        if state == "degraded":
            log(f"{self.name}: degraded, failed units: {', '.join(self.failed_units())}")
        if self.bed_input_dir and (self.bed_input_dir / "setup.sh").exists():
            if not self.is_active("postmaster-bed-setup.service"):
                raise BedError(
                    "/bed/setup.sh failed:\n" + self.journal("postmaster-bed-setup.service")
                )
        for port in self.wait_ports:
            self.wait_port(port)
        t_ready = time.monotonic()
        log(
            f"{self.name}: {state} at {self.ip} (rootfs {t_rootfs - t0:.1f}s, boot "
            f"{t_running - t_rootfs:.1f}s, ports {t_ready - t_running:.1f}s)"
        )

    def stop(self) -> None:
        """Tear the bed down: stop forwarders, power off (TERM, then KILL), then
        cleanup.sh removes cgroups, veth and state. Idempotent; never raises for
        what it cannot remove (it logs it)."""
        if not self._started:
            return
        self._started = False
        # No interrupt may cut a teardown short; one that arrives now is delivered
        # (and raised) once the bed is gone.
        main = threading.current_thread() is threading.main_thread()
        if main:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            for fwd in self._forwarders:
                fwd.stop()
            self._forwarders.clear()
            if self._proc is not None:
                self._power_off()
            cleanup(self.name, quiet=True)
            left = leftovers(self.name, self.rootfs, self.veth, self.bridge if self.own_bridge else None)
            if left:
                log(f"{self.name}: teardown left: {', '.join(left)}")
        finally:
            atexit.unregister(self.stop)
            self._restore_signal_handlers()
            self.pid1 = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            if main:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

    def _power_off(self, timeout: float = 20.0) -> None:
        # nspawn turns SIGTERM into a clean poweroff request to the container's PID 1
        # (~0.5 s here). A request that arrives before systemd has installed its
        # handlers is silently dropped (PID 1 of a namespace ignores unhandled
        # signals), so an interrupted boot needs the request again: repeat it.
        deadline = time.monotonic() + timeout
        while self._proc.poll() is None and time.monotonic() < deadline:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        if self._proc.poll() is None:
            log(f"{self.name}: no poweroff after {timeout:.0f}s, killing nspawn")
            self._proc.kill()
            self._proc.wait()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may; atexit and PDEATHSIG still apply

        def raise_interrupt(signum, _frame):
            # Unwind like Ctrl-C so `with` blocks and fixtures tear down.
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, raise_interrupt)
        # SIGINT already raises KeyboardInterrupt unless someone changed that.
        if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:
            self._old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, raise_interrupt)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def _trace_exists(self) -> Iterable[bool]:
        yield self.state_dir.exists()
        yield any((h / f"{CGROUP_PREFIX}{self.name}").exists() for h in CGROUP_HIERARCHIES)
        yield Path("/sys/class/net", self.veth).exists()
        yield self.own_bridge and Path("/sys/class/net", self.bridge).exists()

    def _find_pid1(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_nspawn()
            for pid, comm in _children(self.pid):
                if comm == "systemd":
                    return pid
            time.sleep(0.05)
        raise BedError(f"no systemd below nspawn {self.pid} after {timeout}s{self._log_tail()}")

    def _setup_host_veth(self) -> None:
        # The host side is the peer of the container's host0: ask the container for
        # host0's peer ifindex instead of guessing nspawn's (possibly hashed) name.
        link = json.loads(self.run(["ip", "-j", "link", "show", "host0"], check=True).stdout)
        peer = link[0]["link_index"]
        hosts = json.loads(_host(["ip", "-j", "link", "show"]).stdout)
        self.veth = next(i["ifname"] for i in hosts if i["ifindex"] == peer)
        (self.state_dir / "veth").write_text(f"{self.veth}\n")
        if self.bridge is None:
            _host(["ip", "addr", "replace", f"{self.host_ip}/24", "dev", self.veth])
        # On a bridge, nspawn enslaved the veth; the host's address is the bridge's.
        _host(["ip", "link", "set", self.veth, "up"])

    def _create_bridge(self) -> None:
        # A second test session on the same /24 would make the host's routes to the
        # beds ambiguous: refuse rather than collide.
        prefix = f"{self.net}."
        for iface in json.loads(_host(["ip", "-j", "-4", "addr", "show"]).stdout):
            for a in iface.get("addr_info", []):
                if a.get("local", "").startswith(prefix):
                    raise BedError(f"{self.net}.0/24 is already in use on the host ({iface['ifname']} {a['local']})")
        # Recorded first, so that cleanup.sh deletes it even if the rest fails.
        (self.state_dir / "bridge").write_text(f"{self.bridge}\n")
        # nf_call_*tables 0: the host's firewall (br_netfilter) never filters traffic
        # between the beds on this bridge. No STP: ports forward at once.
        _host(["ip", "link", "add", self.bridge, "type", "bridge", "stp_state", "0",
               "nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0"])
        _host(["ip", "addr", "add", f"{self.host_ip}/24", "dev", self.bridge])
        _host(["ip", "link", "set", self.bridge, "up"])

    def _check_nspawn(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise BedError(f"systemd-nspawn exited with {self._proc.returncode}{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"; console ({self.log_path}):\n" + "\n".join(text)

    # ---- inside the bed -----------------------------------------------------------

    @property
    def dbus_address(self) -> str:
        """The bed's system bus, reachable from the host (busctl --address=, zbus)."""
        return f"unix:path={self.root}/run/dbus/system_bus_socket"

    @property
    def root(self) -> Path:
        """The container's / as a host path (its volatile overlay, writable)."""
        if self.pid1 is None:
            raise BedError("bed is not running")
        return Path(f"/proc/{self.pid1}/root")

    def path(self, inside: str) -> Path:
        """Host path of a file inside the bed: bed.path("/etc/postfix/main.cf")."""
        return self.root / inside.lstrip("/")

    def run(
        self,
        cmd: Sequence[str] | str,
        *,
        check: bool = False,
        input: str | None = None,
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a command inside the bed (a str goes through /bin/sh -c).

        Enters PID 1's mount, UTS, IPC, network and PID namespaces with nsenter;
        output is captured as text. The process stays in the host's cgroup, so it is
        not part of any unit.
        """
        if self.pid1 is None:
            raise BedError("bed is not running")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = ["nsenter", "-t", str(self.pid1), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--"]
        res = subprocess.run(
            full + argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**CONTAINER_ENV, **(env or {})},
        )
        if check and res.returncode != 0:
            raise BedError(
                f"in bed: {argv} exited {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.run(["systemctl", *args], check=check).stdout

    def is_active(self, unit: str) -> bool:
        return self.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0

    def failed_units(self) -> list[str]:
        out = self.systemctl("list-units", "--failed", "--plain", "--no-legend", check=False)
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def main_pid(self, unit: str) -> int:
        """MainPID of `unit` inside the bed's PID namespace (0: none). On Debian the
        postfix master belongs to postfix@-.service, not postfix.service."""
        return int(self.systemctl("show", "--property=MainPID", "--value", unit).strip() or 0)

    def journal(self, unit: str | None = None, *, lines: int | None = None) -> str:
        """This boot's journal, whole or for one unit."""
        cmd = ["journalctl", "--no-pager", "--quiet", "--boot", "--output=short-precise"]
        cmd += ["--unit", unit] if unit else []
        cmd += ["--lines", str(lines)] if lines else []
        return self.run(cmd).stdout

    def wait_running(self, timeout: float = 90.0) -> str:
        """Poll until the system manager is up; returns "running" or "degraded".

        Polls `systemctl is-system-running`: its --wait fails at once before the bus
        exists, which is most of a boot.
        """
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            self._check_nspawn()
            state = self.run(["systemctl", "is-system-running"], timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return state
            if state in ("maintenance", "stopping"):
                break
            time.sleep(0.1)
        raise BedError(f"system state {state!r} after {timeout}s{self._log_tail()}")

    def wait_port(self, port: int, timeout: float = 30.0, host: str | None = None) -> None:
        """Wait until TCP `port` of the bed accepts a connection from the host."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host or self.ip, port), timeout=1):
                    return
            except OSError as err:
                if time.monotonic() > deadline:
                    raise BedError(f"{host or self.ip}:{port} not reachable: {err}") from err
                self._check_nspawn()
                time.sleep(0.05)

    def wait_active(self, unit: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.is_active(unit):
            if time.monotonic() > deadline:
                raise BedError(f"{unit} not active after {timeout}s:\n{self.journal(unit, lines=30)}")
            time.sleep(0.05)

    def forward(self, ports: Mapping[int, int], bind: str = "127.0.0.1") -> "Forwarder":
        """Relay bind:HOSTPORT -> bed:PORT for each item; stopped at teardown.
        bed.forward({2525: 25, 2587: 587, 2465: 465, 2993: 993, 2995: 995})"""
        fwd = Forwarder(self.ip, ports, bind)
        self._forwarders.append(fwd)
        return fwd


def _host(cmd: list[str]) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise BedError(f"{cmd} exited {res.returncode}: {res.stderr.strip()}")
    return res


class Forwarder:
    """A TCP relay from local ports to the bed, one thread per direction per
    connection: a demo and a handful of test connections, not a load balancer."""

    def __init__(self, target_ip: str, ports: Mapping[int, int], bind: str = "127.0.0.1"):
        self.target_ip = target_ip
        self.ports = dict(ports)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        try:
            for host_port, bed_port in self.ports.items():
                ls = socket.create_server((bind, host_port))  # SO_REUSEADDR is set
                ls.settimeout(0.2)  # lets the accept loop notice stop()
                self._listeners.append(ls)
                t = threading.Thread(
                    target=self._accept_loop, args=(ls, bed_port), daemon=True,
                    name=f"forward-{host_port}-{bed_port}",
                )
                t.start()
                self._threads.append(t)
        except BaseException:
            self.stop()
            raise

    def _accept_loop(self, ls: socket.socket, bed_port: int) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._relay, args=(client, bed_port), daemon=True).start()

    def _relay(self, client: socket.socket, bed_port: int) -> None:
        try:
            upstream = socket.create_connection((self.target_ip, bed_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        back = threading.Thread(target=self._pump, args=(upstream, client), daemon=True)
        back.start()
        self._pump(client, upstream)
        back.join()
        with self._lock:
            self._conns.difference_update((client, upstream))
        client.close()
        upstream.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Pass the half-close on (SMTP QUIT, IMAP LOGOUT end this way).
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def stop(self) -> None:
        self._stopping.set()
        for ls in self._listeners:
            ls.close()
        for t in self._threads:
            t.join(timeout=2)
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


if __name__ == "__main__":
    # Handy by hand: `python3 tests/bed/bed.py [INPUT_DIR]` boots a bed, forwards the
    # demo ports and waits for Ctrl-C.
    try:
        with Bed(sys.argv[1] if len(sys.argv) > 1 else None) as b:
            b.forward({2525: 25, 2587: 587, 2465: 465, 2993: 993, 2995: 995})
            log(f"up at {b.ip}; D-Bus {b.dbus_address}; 127.0.0.1:2525 -> 25 etc.; Ctrl-C stops")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        log("stopped")
