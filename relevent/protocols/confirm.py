"""Confirmations a LAN endpoint owes for device commands that ask for one (`ack_to` of a
DeviceCommand: the site's at_stop reserve, relevent/actors/site.py).

One owner for the bookkeeping every LAN adapter needs: a command is confirmed once the
device has it (ok), or refused at once when the device is not reachable, or when its link
goes down before it took it (not ok, with the reason).  Each DER owes at most one (the
newest command); a later `applied` of that or a newer sequence number settles it.
`send(address, message)` is the actor's send.
"""
from __future__ import annotations

from typing import Any, Callable

from relevent.messages import CommandApplied, DeviceCommand


class Confirmations:
    def __init__(self, send: Callable[[Any, Any], None]) -> None:
        self.send = send
        self.owed: dict[str, tuple[int, Any]] = {}   # der -> (seq, ack_to)

    def expect(self, command: DeviceCommand, reachable: bool, why_not: str = "") -> None:
        """A command arrived: owe its confirmation, or refuse it now if the device is not reachable."""
        if command.ack_to is None:
            return
        if reachable:
            self.owed[command.der] = (command.seq, command.ack_to)
        else:
            self.send(command.ack_to, CommandApplied(command.der, command.seq, False, why_not))

    def applied(self, der: str, seq: int, ok: bool = True, detail: str = "") -> None:
        """The device answered command `seq` (or a newer one): settle what is owed."""
        owed = self.owed.get(der)
        if owed is not None and seq >= owed[0]:
            del self.owed[der]
            self.send(owed[1], CommandApplied(der, owed[0], ok, detail))

    def lost(self, der: str, why: str) -> None:
        """The device's link went down: what is owed is refused with the reason."""
        owed = self.owed.pop(der, None)
        if owed is not None:
            self.send(owed[1], CommandApplied(der, owed[0], False, why))
