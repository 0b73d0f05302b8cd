"""The real Kannel (Debian's bearerbox and smsbox) on loopback, and a phone on its fake SMSC.

:class:`Kannel` writes a ``kannel.conf`` with free ephemeral ports, starts bearerbox, waits for
its admin ``status.txt``, starts smsbox, waits until ``sendsms`` accepts connections and bearerbox
lists the smsbox among its boxes (before that, smsbox answers 403 to everyone), and stops
both through the admin ``shutdown`` URL. Its ``sms-service`` ``get-url`` is fixed when Kannel
starts, while each test runs its own app on a port of its own: it points at an
:class:`InboundRelay` that forwards to whatever :attr:`InboundRelay.target` the current test set.

:class:`FakePhone` connects to the fake SMSC's TCP port and reads the lines Kannel writes for
each message (``sender receiver type data``: ``text`` is UTF-8 as it is, ``ucs-2`` and ``data``
are URL-encoded bytes, ``udh <udh> data <bytes>`` is one part of a concatenated message), and
writes such a line back to play a reply. The fake SMSC serves one phone at a time.
"""

from __future__ import annotations

import asyncio
import ctypes
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal, cast
from urllib.parse import unquote_to_bytes

BEARERBOX = shutil.which("bearerbox") or "/usr/sbin/bearerbox"
SMSBOX = shutil.which("smsbox") or "/usr/sbin/smsbox"
START_TIMEOUT = 15.0


def kannel_installed() -> bool:
    """True when Debian's Kannel boxes are on this machine."""
    return Path(BEARERBOX).is_file() and Path(SMSBOX).is_file()


def free_port() -> int:
    """A port the OS considers free on 127.0.0.1 (Kannel cannot be told to bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class InboundRelay:
    """A tiny threaded HTTP server that forwards every GET to ``target`` + the same path and
    query, and answers with the target's status and body (503 while no target is set)."""

    def __init__(self) -> None:
        self.target: str | None = None
        self.forwarded: list[tuple[str, int]] = []
        relay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = relay.forward(self.path)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the query holds phone numbers

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def forward(self, path: str) -> tuple[int, bytes]:
        target = self.target
        if target is None:
            return 503, b"no test app is listening"
        try:
            with urllib.request.urlopen(target + path, timeout=10) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except OSError:
            status, body = 502, b"test app unreachable"
        self.forwarded.append((path, status))
        return status, body

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


INBOUND_QUERY = "from=%p&to=%P&text=%a&smsc=%i&id=%I&ts=%T"


@dataclass
class Kannel:
    """bearerbox + smsbox with a fake SMSC, all on 127.0.0.1; see the module docstring."""

    workdir: Path
    username: str = "tocsin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    max_messages: int = 10
    relay: InboundRelay = field(default_factory=InboundRelay)
    # What the ``get-url`` carries: Tocsin refuses inbound SMS without it.
    inbound_secret: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    admin_port: int = 0
    smsbox_port: int = 0
    sendsms_port: int = 0
    smsc_port: int = 0
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms"

    @property
    def conf_path(self) -> Path:
        return self.workdir / "kannel.conf"

    def config(self) -> str:
        """The ``kannel.conf`` text (see REFERENCE.md for why each line is there)."""
        d = self.workdir
        return f"""
group = core
admin-port = {self.admin_port}
admin-interface = 127.0.0.1
admin-password = {self.admin_password}
admin-allow-ip = "127.0.0.1"
smsbox-port = {self.smsbox_port}
smsbox-interface = 127.0.0.1
box-allow-ip = "127.0.0.1"
log-file = "{d}/bearerbox.log"
log-level = 1
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = fake1
port = {self.smsc_port}
our-host = 127.0.0.1
connect-allow-ip = 127.0.0.1

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {self.smsbox_port}
sendsms-port = {self.sendsms_port}
sendsms-interface = 127.0.0.1
log-file = "{d}/smsbox.log"
log-level = 1

group = sendsms-user
username = {self.username}
password = {self.password}
max-messages = {self.max_messages}
concatenation = true

group = sms-service
keyword = default
get-url = "{self.relay.url}/sms/kannel/inbound?secret={self.inbound_secret}&{INBOUND_QUERY}"
max-messages = 0
"""

    def start(self) -> None:
        """Start the relay, bearerbox, then smsbox; raise if either is not ready in time."""
        self.relay.start()
        for attempt in range(3):
            self.admin_port, self.smsbox_port = free_port(), free_port()
            self.sendsms_port, self.smsc_port = free_port(), free_port()
            self.conf_path.write_text(self.config(), encoding="utf-8")
            bearerbox = self._spawn(BEARERBOX, "bearerbox")
            if self._wait_ready(bearerbox, self._admin_answers):
                break
            self._terminate(bearerbox)  # most likely a port taken meanwhile: new ports
            if attempt == 2:
                raise RuntimeError(f"bearerbox did not start; see {self.workdir}")
        smsbox = self._spawn(SMSBOX, "smsbox")
        if not self._wait_ready(smsbox, self._smsbox_ready):
            self.stop()
            raise RuntimeError(f"smsbox did not start; see {self.workdir}")

    def stop(self) -> None:
        """Shut Kannel down through its admin URL and wait for both boxes; then the relay."""
        with suppress(OSError):  # already gone: the waits below settle it
            self._admin("shutdown")
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._terminate(process)
        self._processes.clear()
        self.relay.stop()

    def status(self) -> str:
        """bearerbox's ``status.txt``."""
        return self._admin("status.txt")

    def _admin(self, command: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}/{command}?password={self.admin_password}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
        return body.decode("utf-8", "replace")

    def _admin_answers(self) -> bool:
        try:
            return "Status:" in self.status()
        except OSError:
            return False

    def _smsbox_ready(self) -> bool:
        # sendsms listens before smsbox has joined bearerbox, and until it has, it answers
        # 403 to everyone: ready means bearerbox lists it among its boxes.
        if not _accepts(self.sendsms_port):
            return False
        try:
            return "smsbox:" in self.status().partition("Box connections:")[2]
        except OSError:
            return False

    def _spawn(self, binary: str, name: str) -> subprocess.Popen[bytes]:
        out = (self.workdir / f"{name}.out").open("ab")
        try:
            process = subprocess.Popen(
                [binary, "-v", "1", str(self.conf_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            out.close()
        self._processes.append(process)
        return process

    @staticmethod
    def _wait_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool]) -> bool:
        """Poll ``ready`` until it holds, the process exits, or START_TIMEOUT passes; the
        wait between polls is the process's own (so an early exit is seen at once)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return True
            try:
                process.wait(timeout=0.05)
                return False  # it exited
            except subprocess.TimeoutExpired:
                continue
        return False

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process in self._processes:
            self._processes.remove(process)


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test run is killed before it can shut Kannel
    # down, the kernel sends SIGTERM to the box instead of leaving it holding its ports.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def running_kannel(workdir: Path) -> Iterator[Kannel]:
    """A started :class:`Kannel` in ``workdir``, stopped on exit."""
    kannel = Kannel(workdir)
    kannel.start()
    try:
        yield kannel
    finally:
        kannel.stop()


# --- the phone ------------------------------------------------------------------------------

LineKind = Literal["text", "data", "ucs-2", "udh"]


@dataclass(frozen=True)
class PhoneSms:
    """One line Kannel's fake SMSC wrote: one SMS, or one part of a concatenated one."""

    sender: str
    receiver: str
    kind: LineKind
    data: bytes
    udh: bytes = b""

    @property
    def concatenation(self) -> tuple[int, int, int] | None:
        """(reference, total, sequence) from the UDH, or None for a single SMS."""
        udh, index = self.udh, 1
        while index + 1 < len(udh):
            iei, length = udh[index], udh[index + 1]
            body = udh[index + 2 : index + 2 + length]
            if iei == 0x00 and length == 3:
                return body[0], body[1], body[2]
            if iei == 0x08 and length == 4:
                return (body[0] << 8) | body[1], body[2], body[3]
            index += 2 + length
        return None

    def text(self, ucs2: bool | None = None) -> str:
        """The text a handset shows. ``ucs-2`` lines are UTF-16BE; ``text`` and ``data`` lines
        are Kannel's own UTF-8 for GSM-7 messages; a ``udh`` part says nothing of its coding,
        so ``ucs2`` must say it."""
        wide = self.kind == "ucs-2" if ucs2 is None else ucs2
        return self.data.decode("utf-16-be" if wide else "utf-8")


def _field_bytes(value: str) -> bytes:
    # Kannel's octstr_url_encode writes a space as "+" and a "+" as "%2B".
    return unquote_to_bytes(value.replace("+", " "))


def parse_line(line: bytes) -> PhoneSms:
    """One fake-SMSC line → :class:`PhoneSms`."""
    raw = line.rstrip(b"\n")
    sender, receiver, kind, rest = raw.split(b" ", 3)
    name = kind.decode()
    if name == "text":
        return PhoneSms(sender.decode(), receiver.decode(), "text", rest)
    if name in ("data", "ucs-2"):
        kind_name = cast(LineKind, name)
        return PhoneSms(sender.decode(), receiver.decode(), kind_name, _field_bytes(rest.decode()))
    if name == "udh":
        udh, _, data = rest.decode().split(" ", 2)
        return PhoneSms(
            sender.decode(), receiver.decode(), "udh", _field_bytes(data), _field_bytes(udh)
        )
    raise ValueError(f"unknown fake-SMSC line type {name!r}")


@dataclass(frozen=True)
class Received:
    """A whole message as the handset shows it, with the parts it came in."""

    text: str
    parts: tuple[PhoneSms, ...]


class FakePhone:
    """Every handset at once, on the fake SMSC: read what Kannel sends, reply as a number."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.inbox: list[PhoneSms] = []

    async def __aenter__(self) -> FakePhone:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    async def next_sms(self, receiver: str, timeout: float = 10.0) -> PhoneSms:
        """The next SMS (or part) for ``receiver``; others are kept in :attr:`inbox`."""
        assert self._reader is not None, "use `async with FakePhone(port)`"
        async with asyncio.timeout(timeout):
            while True:
                line = await self._reader.readline()
                if not line:
                    raise ConnectionError("the fake SMSC closed the connection")
                sms = parse_line(line)
                if sms.receiver == receiver:
                    return sms
                self.inbox.append(sms)

    async def receive(
        self, receiver: str, *, ucs2: bool | None = None, timeout: float = 10.0
    ) -> Received:
        """The next whole message for ``receiver``, reassembled from its parts by their UDH
        reference and sequence numbers."""
        async with asyncio.timeout(timeout):
            first = await self.next_sms(receiver)
            info = first.concatenation
            if info is None:
                return Received(first.text(ucs2), (first,))
            ref, total, _ = info
            parts = {info[2]: first}
            while len(parts) < total:
                part = await self.next_sms(receiver)
                other = part.concatenation
                if other is None or other[0] != ref:
                    raise AssertionError(f"expected part of message {ref}, got {part!r}")
                parts[other[2]] = part
        ordered = tuple(parts[i] for i in sorted(parts))
        wide = ucs2 if ucs2 is not None else False
        return Received(
            b"".join(p.data for p in ordered).decode("utf-16-be" if wide else "utf-8"), ordered
        )

    async def reply(self, sender: str, receiver: str, text: str) -> None:
        """``sender``'s handset sends ``text`` (one line, UTF-8) to ``receiver``."""
        assert self._writer is not None, "use `async with FakePhone(port)`"
        if "\n" in text or "\r" in text:
            raise ValueError("a fake-SMSC text line cannot hold a line break")
        self._writer.write(f"{sender} {receiver} text {text}\n".encode())
        await self._writer.drain()
