"""TLS on the listeners (``chat-server serve --tls-cert FILE --tls-key FILE``).

``Certificates`` holds the server's ``ssl.SSLContext`` made from a certificate
file pair, with ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)``'s
defaults and TLS 1.2 at least. ``reload`` reads the files again (the node calls
it on SIGHUP): connections accepted afterwards get the new certificate, those
open keep theirs. A pair that cannot be loaded leaves the old one in use.

``handshake`` runs the server side of one handshake under a deadline. It
answers ``None`` when the handshake fails (a plain-text client on the TLS port,
an unknown protocol version, a peer that left) or stalls: the caller then
closes the TCP stream, and nothing else happened for that connection.

``Wire`` is the TCP stream under a connection's ``trio.SSLStream``. Outside a
batch it passes every write on. ``Wire.send_frames`` writes several frames with
one system call and an exact count: each frame goes through ``SSLStream.send_all``
on its own (a TLS record or more of its own, ending at a known offset of the
encrypted bytes), the wire holds those bytes instead of sending them, then puts
them all on the socket with ``send`` calls that either send or, when cancelled,
do nothing, so it knows how many bytes the kernel took, and so which frames left
whole. A frame is never counted as written unless every byte of its records
left; a write cut off breaks the wire (later writes fail at once), as it breaks
an ``SSLStream``.

``Prefixed`` puts back bytes read ahead (what followed a PROXY protocol header
in the same read: the start of the ClientHello) in front of a stream.
"""

from __future__ import annotations

import bisect
import logging
import ssl
from collections.abc import Sequence
from typing import Protocol

import trio

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for the pair (the certificate file may hold the chain after
    the certificate). Raises ``OSError`` (``ssl.SSLError`` is one) if it cannot load."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(cert_file, key_file)
    return context


class Certificates:
    """The context new TLS connections use, reloadable from the same files."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = server_context(cert_file, key_file)
        self.reloads = 0
        """Successful reloads so far."""

    async def reload(self) -> bool:
        """Read the files again (in a thread: they may be on a slow disk); False, and
        the previous certificate kept, if the new pair does not load."""
        try:
            context = await trio.to_thread.run_sync(server_context, self.cert_file, self.key_file)
        except OSError as exc:
            log.error(
                "cannot reload the TLS certificate %s (key %s): %s; keeping the previous one",
                self.cert_file,
                self.key_file,
                exc,
            )
            return False
        self.context = context
        self.reloads += 1
        log.info("reloaded the TLS certificate %s", self.cert_file)
        return True


async def handshake(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    within: float,
    peer: str,
    *,
    socket_stream: trio.SocketStream | None = None,
) -> trio.SSLStream[trio.abc.Stream] | None:
    """The server side of a TLS handshake on ``stream`` within ``within`` seconds
    (``0``: no limit); ``None`` if it failed or did not finish in time (logged at
    INFO: a port scanner or a client that forgot ``--tls`` is no server error). The
    caller closes ``stream`` then. ``socket_stream``: the TCP connection ``stream``
    reads from (itself, or under a ``Prefixed``); the TLS stream then writes through
    a ``Wire`` on it (batched writes, see ``Wire.send_frames``)."""
    transport: trio.abc.Stream = stream
    if socket_stream is not None:
        transport = Wire(stream, socket_stream)
    tls = trio.SSLStream(transport, context, server_side=True)
    with trio.move_on_after(within or float("inf")):
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            cause = exc.__cause__ or exc
            log.info("%s: TLS handshake failed: %s", peer, cause or type(cause).__name__)
            return None
        return tls
    log.info("%s: no TLS handshake within %g s", peer, within)
    return None


class Prefixed(trio.abc.Stream):
    """``stream`` with ``data`` read first (bytes already taken from it)."""

    def __init__(self, stream: trio.abc.Stream, data: bytes) -> None:
        self.stream = stream
        self._data = data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._data:
            return bytes(await self.stream.receive_some(max_bytes))
        await trio.lowlevel.checkpoint()
        size = max_bytes or len(self._data)
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Counts(Protocol):
    frames_sent: int


class Wire(trio.abc.HalfCloseableStream):
    """The TCP connection under an ``SSLStream`` (see the module): reads from
    ``stream`` (the socket stream, or a ``Prefixed`` over it), writes on
    ``socket_stream``; inside ``send_frames`` it holds what the TLS stream writes."""

    def __init__(self, stream: trio.abc.Stream, socket_stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket_stream = socket_stream
        self._held: bytearray | None = None
        self._broken = False
        self._sending = trio.Lock()
        """Held by whoever writes on the socket: a write passed on, or a batch's."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken:
            raise trio.BrokenResourceError("a TLS write was cut off")
        if self._held is not None:
            self._held += data
            await trio.lowlevel.cancel_shielded_checkpoint()  # taken: too late to cancel
            return
        async with self._sending:
            await self.socket_stream.send_all(data)

    async def send_frames(
        self, tls: trio.SSLStream[trio.abc.Stream], frames: Sequence[bytes], counts: _Counts
    ) -> None:
        """Write ``frames`` (delimiters included) through ``tls``, whose transport this
        wire is, in one batch; add to ``counts.frames_sent`` the frames that left whole,
        also when cancelled or failing halfway. Raises ``trio.BrokenResourceError``
        (the connection is lost, or an earlier write was cut off) or ``OSError``."""
        if self._broken:
            raise trio.BrokenResourceError("a TLS write was cut off")
        held = self._held = bytearray()
        ends: list[int] = []
        sent = 0
        try:
            for frame in frames:
                await tls.send_all(frame)  # encrypted into ``held``, not sent
                ends.append(len(held))
            async with self._sending:
                # Also what the TLS stream writes meanwhile on its own (an answer to
                # the peer's key update, say): it lands in ``held`` after the frames.
                while sent < len(held):
                    sent += await self.socket_stream.socket.send(held[sent:])
        finally:
            self._held = None
            counts.frames_sent += bisect.bisect_right(ends, sent)
            if sent < len(held):
                self._broken = True

    async def send_eof(self) -> None:
        async with self._sending:
            await self.socket_stream.send_eof()

    async def wait_send_all_might_not_block(self) -> None:
        await self.socket_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return bytes(await self.stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.stream.aclose()
