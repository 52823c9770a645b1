"""Where a Modbus device is: a DER's `address` on a Modbus endpoint.

  1                      unit 1 at the endpoint's host and port
  "192.0.2.7:502"        unit 1 at that host and port
  "192.0.2.7:502/3"      unit 3 there
Each device gets its own connection, so one unreachable device never delays another."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceAddress:
    host: str
    port: int
    unit: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.unit}"


def parse_device_address(address: int | str, host: str, port: int) -> DeviceAddress:
    """Raise ValueError naming what is wrong."""
    if isinstance(address, int) and not isinstance(address, bool):
        unit = address
    elif isinstance(address, str) and address.strip():
        m = re.fullmatch(r"\s*(?:([^\s:/]+):(\d+))?(?:/?(\d+))?\s*", address)
        if not m or not (m.group(1) or m.group(3)):
            raise ValueError(f"Modbus address {address!r}: expected UNIT, HOST:PORT or HOST:PORT/UNIT")
        if m.group(1):
            host, port = m.group(1), int(m.group(2))
        unit = int(m.group(3)) if m.group(3) else 1
        if not 1 <= port <= 65535:
            raise ValueError(f"Modbus address {address!r}: port {port} is not 1..65535")
    elif address == "":
        unit = 1
    else:
        raise ValueError(f"Modbus address {address!r}: expected UNIT, HOST:PORT or HOST:PORT/UNIT")
    if not 0 <= unit <= 247:
        raise ValueError(f"Modbus address {address!r}: unit {unit} is not 0..247")
    return DeviceAddress(host, port, unit)
