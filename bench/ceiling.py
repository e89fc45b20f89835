"""The bare asyncio.Protocol SMTP sink: the speed of light for Python on this machine.

It speaks just enough SMTP for the benchmark clients (greeting, HELO/EHLO, MAIL, RCPT, DATA with
CRLF.CRLF detection, RSET, NOOP, QUIT), checks nothing, keeps nothing, and batches the replies to
one write per received chunk. No features belong here: it is the reference the servers are
measured against, so it must stay the simplest thing that could possibly sink mail.

``BufferedCeilingSink`` is the same sink as an ``asyncio.BufferedProtocol``: the transport reads
into one preallocated buffer instead of allocating a fresh bytes object for every read, which is
what a plain Protocol costs on the stock event loop.
"""

import asyncio

EHLO = b"250-bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 33554432\r\n"
END = b"\r\n.\r\n"
# One receive buffer for every connection: each read is consumed before the next one starts.
RECEIVE: memoryview = memoryview(bytearray(256 * 1024))


class CeilingSink(asyncio.Protocol):
    """One connection: a command mode and a data mode, nothing else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = bytearray()
        self.in_data = False
        self.scanned = 0
        transport.write(b"220 bench ESMTP ceiling\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes | memoryview) -> None:
        buf = self.buf
        buf += data
        out = []
        pos = 0
        while True:
            if self.in_data:
                end = buf.find(END, max(pos, self.scanned - 4))
                if end < 0:
                    self.scanned = len(buf)
                    break
                with memoryview(buf) as view:  # the message, copied once, then unstuffed
                    bytes(view[pos + 2 : end + 2]).replace(b"\r\n..", b"\r\n.")
                pos = end + 5
                self.in_data = False
                out.append(b"250 2.0.0 OK queued\r\n")
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            verb = bytes(buf[pos : pos + 4]).upper()
            pos = eol + 2
            if verb == b"EHLO":
                out.append(EHLO)
            elif verb == b"DATA":
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data = True
                # Back up over the CRLF ending DATA so an empty body's ".\r\n" still matches.
                pos -= 2
                self.scanned = pos
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(out))  # type: ignore[attr-defined]
                self.transport.close()
                return
            else:
                out.append(b"250 2.0.0 OK\r\n")
        del buf[:pos]
        self.scanned = max(0, self.scanned - pos)
        if out:
            self.transport.write(b"".join(out))  # type: ignore[attr-defined]


class BufferedCeilingSink(CeilingSink, asyncio.BufferedProtocol):
    """The same sink, receiving into the shared preallocated buffer."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return RECEIVE

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(RECEIVE[:nbytes])
