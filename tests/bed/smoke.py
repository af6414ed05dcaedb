#!/usr/bin/env python3
"""Smoke test of the test bed itself: build or reuse the rootfs, boot it, check that
it is a usable mail host, tear it down and check that nothing is left.

    tests/bed/smoke.py                # one boot
    tests/bed/smoke.py --interrupt    # also: SIGINT a bed mid-boot and once up
    tests/bed/smoke.py --hold 30      # stay up 30 s after the checks (manual poking)

Prints one PASS/FAIL line per check and closes with "N passed, N failed"; exits 1
if any check failed. Needs root (see bed.py for the host packages).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bed import Bed, BedError, ensure_rootfs, leftovers  # noqa: E402

SETUP_SH = """#!/bin/sh
# Trivial per-boot setup: proves /bed is mounted and the setup unit ran first.
set -eu
touch /run/bed-setup-ran
"""

# Where trixie puts the ACME tools (the checks pin them so a package change shows).
BINARIES = ["/usr/bin/pebble", "/usr/bin/pebble-challtestsrv", "/usr/bin/lego", "/usr/bin/certbot"]
PEBBLE_CONFIG = "/usr/share/doc/pebble/examples/pebble-config.json"

passed = failed = 0


def check(what: str, ok: bool, detail: str = "") -> bool:
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
    print(f"{'PASS' if ok else 'FAIL'}: {what}{f' ({detail})' if detail else ''}", flush=True)
    return ok


def smtp_banner(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=5) as s:
        s.settimeout(5)
        return s.recv(512).decode(errors="replace").strip()


def boot_and_check(name: str, rootfs: Path, hold: float) -> None:
    with tempfile.TemporaryDirectory(prefix="pmbed-input-") as input_dir:
        setup = Path(input_dir, "setup.sh")
        setup.write_text(SETUP_SH)
        setup.chmod(0o755)

        t0 = time.monotonic()
        with Bed(input_dir, name=name, rootfs=rootfs) as bed:
            print(f"bed up in {time.monotonic() - t0:.1f}s (cache hit -> ports open)")
            # The marker the parent of an --interrupt run waits for.
            print("SMOKE-UP", flush=True)
            state = bed.systemctl("is-system-running", check=False).strip()
            check("system running", state == "running",
                  f"{state}; failed: {bed.failed_units()}" if state != "running" else "")
            check("setup.sh ran before the mail services",
                  bed.is_active("postmaster-bed-setup.service")
                  and bed.path("/run/bed-setup-ran").exists())
            for unit in ("postfix.service", "dovecot.service"):
                check(f"{unit} active with a main PID",
                      bed.is_active(unit) and bed.main_pid(unit) > 0,
                      f"MainPID {bed.main_pid(unit)}")

            res = subprocess.run(
                ["busctl", f"--address={bed.dbus_address}", "call",
                 "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                 "org.freedesktop.systemd1.Manager", "ReloadUnit", "ss",
                 "postfix.service", "replace"],
                capture_output=True, text=True, timeout=10)
            check("D-Bus ReloadUnit postfix.service from the host",
                  res.returncode == 0 and "/job/" in res.stdout,
                  (res.stdout or res.stderr).strip())
            try:
                bed.wait_active("postfix.service", timeout=10)
                check("postfix active after the reload", True)
            except BedError as err:
                check("postfix active after the reload", False, str(err))

            for path in BINARIES + [PEBBLE_CONFIG]:
                check(f"{path} present", bed.path(path).is_file())

            try:
                banner = smtp_banner(bed.ip, 25)
            except OSError as err:
                banner = f"error: {err}"
            check(f"port 25 reachable from the host at {bed.ip}",
                  banner.startswith("220 mail.example.org"), banner)
            bed.forward({2525: 25})
            try:
                banner = smtp_banner("127.0.0.1", 2525)
            except OSError as err:
                banner = f"error: {err}"
            check("forwarder 127.0.0.1:2525 -> :25", banner.startswith("220 "), banner)

            # Isolation: only loopback and the veth peer are reachable.
            routes = bed.run(["ip", "-4", "route"]).stdout
            check("no default route in the bed", "default" not in routes, routes.strip())
            resolv = bed.path("/etc/resolv.conf").read_text()
            check("resolv.conf is nameserver 127.0.0.1",
                  resolv.split() == ["nameserver", "127.0.0.1"], resolv.strip())

            versions = bed.run(
                "echo postfix $(postconf -h mail_version); echo dovecot $(dovecot --version);"
                " systemctl --version | head -n1").stdout
            print("versions: " + "; ".join(versions.split("\n")).strip("; "))
            print(f"host veth: {bed.veth}; D-Bus: {bed.dbus_address}")
            if hold:
                print(f"holding for {hold}s", flush=True)
                time.sleep(hold)
            t_down = time.monotonic()
            veth = bed.veth
        print(f"teardown took {time.monotonic() - t_down:.1f}s")
    left = leftovers(name, rootfs, veth)
    check("nothing left after teardown", not left, ", ".join(left))


def interrupt_run(name: str, rootfs: Path, when: str) -> None:
    """Start a child smoke run and SIGINT it `when` = "booting" or "up"."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--name", name, "--hold", "60"],
        stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    if when == "up":
        for line in child.stdout:
            if line.strip() == "SMOKE-UP":
                break
    else:  # as soon as its nspawn exists: mid-boot
        while not any(x.startswith("nspawn") for x in leftovers(name)):
            if time.monotonic() > deadline or child.poll() is not None:
                break
            time.sleep(0.02)
    t0 = time.monotonic()
    child.send_signal(signal.SIGINT)
    try:
        rc = child.wait(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        rc = "hung"
    child.stdout.close()
    left = leftovers(name, rootfs)
    check(f"SIGINT while {when}: child exited ({rc}) in {time.monotonic() - t0:.1f}s, "
          "nothing left", not left and rc != "hung", ", ".join(left))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", default="pmbed-smoke")
    ap.add_argument("--hold", type=float, default=0, help="seconds to stay up after the checks")
    ap.add_argument("--interrupt", action="store_true", help="also test SIGINT cleanup")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("smoke.py needs root", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    rootfs = ensure_rootfs()
    print(f"rootfs ready in {time.monotonic() - t0:.1f}s: {rootfs}")
    try:
        boot_and_check(args.name, rootfs, args.hold)
    except BedError as err:
        check("bed boots", False, str(err))
    if args.interrupt:
        interrupt_run(args.name, rootfs, "booting")
        interrupt_run(args.name, rootfs, "up")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # The bed has been torn down by now (Bed.__exit__ ran while unwinding).
        print("interrupted", file=sys.stderr)
        sys.exit(130)
