"""Parameters shared by every stack: where to bind, which paths to use, buffers."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .endpoint import Endpoint
from .path import InterfaceType

__all__ = ["Parameters", "ServiceClass"]


class ServiceClass(enum.Enum):
    """The kind of traffic, mapped to a DSCP code point (RFC 4594) on every packet."""

    BEST_EFFORT = 0
    BACKGROUND = 8  # CS1
    INTERACTIVE_VIDEO = 34  # AF41
    INTERACTIVE_VOICE = 46  # EF
    RESPONSIVE_DATA = 18  # AF21
    SIGNALING = 24  # CS3

    @property
    def dscp(self) -> int:
        """The 6-bit DSCP value."""
        return self.value

    @property
    def tos(self) -> int:
        """The value for ``IP_TOS`` / ``IPV6_TCLASS`` (DSCP shifted past the ECN bits)."""
        return self.value << 2


@dataclass(frozen=True, slots=True)
class Parameters:
    """Options every stack understands. All fields are optional."""

    local_endpoint: Endpoint | None = None
    """Bind to this local address and port before connecting (default: any)."""
    required_interface: str | None = None
    """Only use this interface, by name (``SO_BINDTODEVICE``); default: any."""
    required_interface_type: InterfaceType | None = None
    """Only use interfaces of this type; default: any."""
    prohibited_interface_types: frozenset[InterfaceType] = frozenset()
    """Never use interfaces of these types; default: none."""
    service_class: ServiceClass = ServiceClass.BEST_EFFORT
    """Traffic class, sent as DSCP; default best effort."""
    send_buffer: int = 1 << 20
    """Bytes a connection holds for sending before ``send`` waits; default 1 MiB."""
    receive_buffer: int = 1 << 20
    """Bytes a connection holds unread before it stops reading; default 1 MiB."""
    attempt_timeout: float = 30.0
    """Seconds one establishment attempt may take before it counts as failed."""
    connection_attempt_delay: float = 0.25
    """Seconds between starting one address's attempt and the next (RFC 8305); default 0.25."""
    resolution_delay: float = 0.05
    """Seconds to wait for IPv6 (AAAA) answers once IPv4 ones arrived (RFC 8305); default 0.05."""
    viability_debounce: float = 0.5
    """Seconds a viability change must last before it is reported; default 0.5."""
    retry_delays: tuple[float, float] = (0.5, 10.0)
    """Seconds before the first retry from ``Waiting``, and the cap as it doubles."""
    wait_for_connectivity: bool = False
    """Whether ``async with`` rides out ``Waiting`` instead of raising its error."""
    reuse_address: bool = True
    """Listeners: set ``SO_REUSEADDR``; default true."""

    def __post_init__(self) -> None:
        if self.send_buffer < 1 or self.receive_buffer < 1:
            raise ValueError("send_buffer and receive_buffer must be positive")
        if self.attempt_timeout <= 0:
            raise ValueError("attempt_timeout must be positive")
        if min(self.connection_attempt_delay, self.resolution_delay, self.viability_debounce) < 0:
            raise ValueError("delays must not be negative")
