"""The scenario tests' mail host: the seed's, booted once per test session in a bed."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "lib"))
sys.path.insert(0, str(HERE))

import mailhost  # noqa: E402
import world as outside_world  # noqa: E402
from mailclient import Server  # noqa: E402


@pytest.fixture(scope="session")
def world():
    """The outside world (tests/lib/world.py): DNS for the bed's zones and
    mx.example.com. Booted before the mail host, so its resolver answers from the start."""
    with outside_world.World() as w:
        yield w


@pytest.fixture(scope="session")
def host(world):
    with tempfile.TemporaryDirectory(prefix="postmaster-bed-") as tmp:
        h = mailhost.prepare(Path(tmp) / "bed")
        bed = mailhost.boot(h, world=world)
        try:
            failed = bed.failed_units()
            assert not failed, f"units failed in the bed: {failed}\n{bed.journal(lines=80)}"
            # What a user does after setting up: publish what `postmaster dns` prints.
            h.extra["dns"] = {}
            for zone, records in mailhost.dns_zones(h).items():
                if zone in world.zones:
                    world.set_baseline(zone, records)
                    h.extra["dns"][zone] = records
            yield h
        finally:
            bed.stop()


@pytest.fixture
def dns_published(host, world) -> dict:
    """The records `postmaster dns` printed, by zone, published in the bed's DNS
    for the session. A test that changes them puts them back (world.unpublish)."""
    return host.extra["dns"]


@pytest.fixture(scope="session")
def server(host) -> Server:
    return Server(address=host.ip, ca_file=str(host.ca.cert))


@pytest.fixture
def thomas():
    return ("thomas", mailhost.PASSWORDS["thomas"])


@pytest.fixture
def anna():
    return ("anna", mailhost.PASSWORDS["anna"])


def pytest_runtest_makereport(item, call):
    """On a failing scenario, show the bed's journal: the reason is usually there."""
    if call.when == "call" and call.excinfo is not None and "host" in item.fixturenames:
        h = item.funcargs.get("host")
        if h is not None and h.bed is not None:
            try:
                tail = h.bed.journal(lines=60)
            except Exception as e:  # the bed itself may be what failed
                tail = f"(journal unavailable: {e})"
            item.add_report_section("call", "bed journal", tail)
    if call.when == "call" and call.excinfo is not None and "world" in item.fixturenames:
        w = item.funcargs.get("world")
        if w is not None and w.bed is not None:
            try:
                tail = w.journal(lines=40)
            except Exception as e:
                tail = f"(journal unavailable: {e})"
            item.add_report_section("call", "outside world journal", tail)
