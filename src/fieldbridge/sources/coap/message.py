"""The typed face of aiocoap's Message: exactly the parts the CoAP source and transport use.

aiocoap ships no type information (mypy sees it as Any), so these Protocols say what we rely
on; `decode` and `new_message` are the only places an untyped aiocoap object enters our code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import aiocoap


class Address(Protocol):
    """A sender's address as the transport gives it (transport.Remote)."""

    @property
    def sockaddr(self) -> tuple[Any, ...]: ...

    @property
    def hostinfo(self) -> str: ...


class Option(Protocol):
    """One option instance; `value` is bytes for options aiocoap does not know."""

    @property
    def number(self) -> int: ...  # odd: critical (RFC 7252 §5.4.6)

    @property
    def value(self) -> object: ...


class Options(Protocol):
    """The options of a message (aiocoap.options.Options)."""

    @property
    def uri_path(self) -> Sequence[str]: ...

    # RFC 7967: which answer classes the client does not want; a server-side instruction to
    # the transport here, taken off before the answer is encoded.
    no_response: int | None

    def get_option(self, number: int) -> Sequence[Option]: ...

    def option_list(self) -> Iterable[Option]: ...  # in number order


class Message(Protocol):
    """A CoAP message (aiocoap.Message): a decoded request, or an answer being built."""

    code: int  # aiocoap's Code, an IntEnum: class in the top 3 bits, detail in the low 5
    mtype: int | None  # aiocoap's Type (CON 0, NON 1, ACK 2, RST 3); None until sent
    mid: int | None  # None until the transport numbers an outgoing message
    token: bytes
    payload: bytes

    @property
    def opt(self) -> Options: ...

    @property
    def remote(self) -> Address: ...

    def encode(self) -> bytes: ...


def decode(data: bytes, remote: Address) -> Message:
    """Parse one datagram; raises aiocoap's several error kinds for malformed messages."""
    message: Message = aiocoap.Message.decode(data, remote)
    return message


def new_message(code: int, payload: bytes = b"", *, no_response: int | None = None) -> Message:
    """An answer with `code` and `payload`; `no_response` (RFC 7967) tells the transport which
    answer classes not to send."""
    message: Message = aiocoap.Message(code=code, payload=payload)
    if no_response is not None:
        message.opt.no_response = no_response
    return message
