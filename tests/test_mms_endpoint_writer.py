"""The MMS endpoint's writer thread puts controllers' states into the model with what
clients wrote since left as they wrote it (relevent/protocols/mms/endpoint.py `_apply`,
`_unacked`): the endpoint outside any site, its session, server and C switcher replaced
by recorders, the model book (relevent/protocols/mms/book.py) real."""
from __future__ import annotations

from relevent.protocols.mms.book import ModelBook
from relevent.protocols.mms.endpoint import MmsEndpoint, _Guarded
from relevent.wan.session import Who
from test_mms_book import IED, LD, state

PRIO = f"{LD}/ActPow_FSCH01.SchdPrio.setVal"


class Session:
    """The endpoint's view of the control session: the writes accepted and not yet in a
    state the controller sent, as `unacked` gives them."""
    def __init__(self) -> None:
        self.pending: list[tuple] = []

    def who(self, *_args) -> Who:
        return Who("")

    def unacked(self, der: str, kind: str, acked: int) -> list[tuple]:
        return list(self.pending)


class Switcher:
    def __init__(self) -> None:
        self.pushed: list[set] = []
        self.lost = 0

    def push(self, outputs, rest=()) -> None:
        self.pushed.append({u[0] for u in [*outputs, *rest]})

    def collect(self) -> list:
        return []

    def cancel(self, _key) -> bool:
        return True

    def drain(self) -> int:
        return 0

    def arm(self, *_args) -> None:
        pass


def endpoint() -> tuple[MmsEndpoint, Session, Switcher]:
    session, switcher = Session(), Switcher()
    ep = MmsEndpoint(session, {"name": "mms"})
    ep.lds = {"pv1": LD}
    ep.server = object()      # not None: the model exists
    ep.book = _Guarded(ModelBook(IED, {"pv1": LD}, has=lambda ref: True))
    ep.switcher = switcher
    return ep, session, switcher


def write_next_queued_state(ep: MmsEndpoint) -> None:
    ep._apply(ep.states.get_nowait())   # what the writer thread does with it


def test_a_write_accepted_after_a_state_came_in_is_not_overwritten_when_the_writer_gets_to_it():
    ep, session, switcher = endpoint()
    ep.on_state(state(1, prio=20), [])
    write_next_queued_state(ep)
    assert PRIO in switcher.pushed[-1]
    ep.on_state(state(2, prio=30), [])                # the controller's state, before the client's write
    session.pending.append(("FSCH01", "SchdPrio", 0, 40))   # a client writes SchdPrio 40 meanwhile
    write_next_queued_state(ep)
    assert PRIO not in switcher.pushed[-1], "the state's 30 would overwrite the client's 40"


def test_without_a_write_since_the_state_it_goes_into_the_model_whole():
    ep, _session, switcher = endpoint()
    ep.on_state(state(1, prio=20), [])
    write_next_queued_state(ep)
    ep.on_state(state(2, prio=30), [])
    write_next_queued_state(ep)
    assert PRIO in switcher.pushed[-1]
