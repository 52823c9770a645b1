"""The confirmations a LAN endpoint owes for at_stop commands (relevent/protocols/confirm.py)."""
from __future__ import annotations

from relevent.messages import CommandApplied, DeviceCommand
from relevent.protocols.confirm import Confirmations


def command(seq: int, ack_to="der-address") -> DeviceCommand:
    return DeviceCommand("pv1", 0.0, 3000.0, True, {}, [], 0, seq, None, ack_to=ack_to)


def test_a_command_is_confirmed_when_the_device_applied_it_or_a_newer_one():
    sent = []
    c = Confirmations(lambda to, m: sent.append((to, m)))
    c.expect(command(7), reachable=True)
    c.applied("pv1", 6)
    assert sent == []
    c.applied("pv1", 8)
    assert sent == [("der-address", CommandApplied("pv1", 7, True, ""))]
    c.applied("pv1", 9)
    assert len(sent) == 1, "confirmed once"


def test_an_unreachable_device_or_a_lost_link_refuses_with_the_reason():
    sent = []
    c = Confirmations(lambda to, m: sent.append(m))
    c.expect(command(3), reachable=False, why_not="device link down: refused")
    assert sent == [CommandApplied("pv1", 3, False, "device link down: refused")]
    c.expect(command(4), reachable=True)
    c.lost("pv1", "device link down: reset")
    c.applied("pv1", 4)
    assert sent[1:] == [CommandApplied("pv1", 4, False, "device link down: reset")]


def test_a_command_without_ack_to_owes_nothing():
    sent = []
    c = Confirmations(lambda to, m: sent.append(m))
    c.expect(command(1, ack_to=None), reachable=False, why_not="x")
    c.applied("pv1", 1)
    assert sent == [] and c.owed == {}
