"""A tiny authoritative DNS server over UDP whose answers a test changes while it runs: the
A records of one name, so a gRPC channel with a `dns://127.0.0.1:<port>/<name>:<port>` target
sees replicas come and go as they would behind a Kubernetes headless Service."""

from __future__ import annotations

import socket
import struct
import threading

TYPE_A = 1
CLASS_IN = 1


class FleetDns:
    """Answers A queries for `name` with `addresses` (mutable, read on every query) and every
    other question with an empty answer (NOERROR), or NXDOMAIN for other names."""

    def __init__(self, name: str, addresses: list[str], ttl_s: int = 0) -> None:
        self.name = name.rstrip(".").lower()
        self.addresses = list(addresses)
        self.ttl_s = ttl_s
        self.queries = 0
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="fleet-dns", daemon=True)

    def __enter__(self) -> FleetDns:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._socket.close()  # recvfrom fails at once and the thread ends

    def _serve(self) -> None:
        while True:
            try:
                query, client = self._socket.recvfrom(512)
            except OSError:
                return
            answer = self.answer(query)
            if answer is not None:
                self._socket.sendto(answer, client)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, flags, questions = struct.unpack("!HHH", query[:6])
        if questions != 1:
            return None
        labels, offset = [], 12
        while offset < len(query) and (length := query[offset]):
            labels.append(query[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
            offset += 1 + length
        end = offset + 5  # the root label, then QTYPE and QCLASS
        if end > len(query):
            return None
        qtype, qclass = struct.unpack("!HH", query[offset + 1 : end])
        question = query[12:end]
        self.queries += 1
        ours = ".".join(labels).lower() == self.name
        records = list(self.addresses) if ours and (qtype, qclass) == (TYPE_A, CLASS_IN) else []
        # Response, authoritative, the client's recursion-desired bit echoed; NXDOMAIN (3)
        # for names that are not ours.
        reply_flags = 0x8400 | (flags & 0x0100) | (0 if ours else 3)
        header = struct.pack("!HHHHHH", ident, reply_flags, 1, len(records), 0, 0)
        body = b"".join(
            # A pointer to the question's name (offset 12), then type, class, TTL, address.
            struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, self.ttl_s, 4) + socket.inet_aton(a)
            for a in records
        )
        return header + question + body
