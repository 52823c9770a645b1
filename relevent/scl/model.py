"""An SCL file as a resolved tree: every DO, SDO, DA and BDA instantiated from the
DataTypeTemplates, with the initial values of the type and of the instance (DOI/SDI/DAI).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Trigger options of a DA, as libiec61850 encodes them.
TRG_DCHG, TRG_QCHG, TRG_DUPD = 1, 2, 4


@dataclass
class Node:
    """A DO, SDO, DA or BDA.  BDAs carry the FC of their DA."""
    name: str
    kind: str                     # DO | SDO | DA | BDA
    line: int | None = None       # where its definition (or instance value) is
    fc: str | None = None
    btype: str | None = None      # DA/BDA basic type (BOOLEAN, Struct, Enum, ...)
    type_id: str | None = None    # DOType / DAType / EnumType id
    cdc: str | None = None        # DO/SDO common data class
    count: int = 0                # array elements (0: not an array)
    trg: int = 0
    value: str | None = None      # initial value, as written in SCL (enum literal, number, text)
    children: list["Node"] = field(default_factory=list)

    def child(self, name: str) -> "Node | None":
        return next((c for c in self.children if c.name == name), None)

    def find(self, path: str) -> "Node | None":
        node: Node | None = self
        for part in path.split("."):
            node = node.child(part) if node else None
        return node

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()


@dataclass
class FCDA:
    ld_inst: str
    prefix: str
    ln_class: str
    ln_inst: str
    do_name: str
    da_name: str
    fc: str


@dataclass
class DataSet:
    name: str
    members: list[FCDA]
    line: int | None = None


@dataclass
class ReportControl:
    name: str
    dataset: str
    rpt_id: str
    buffered: bool
    conf_rev: int
    intg_pd: int
    buf_time: int
    trg_ops: int       # libiec61850 bits: dchg 1, qchg 2, dupd 4, period 8, gi 16
    opt_fields: int    # seqNum 1, timeStamp 2, reasonCode 4, dataSet 8, dataRef 16, bufOvfl 32, entryID 64, configRef 128
    max_clients: int
    line: int | None = None


@dataclass
class LogicalNode:
    prefix: str
    ln_class: str
    inst: str
    ln_type: str
    desc: str = ""
    line: int | None = None
    children: list[Node] = field(default_factory=list)
    datasets: list[DataSet] = field(default_factory=list)
    reports: list[ReportControl] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.ln_class}{self.inst}"

    def child(self, name: str) -> Node | None:
        return next((c for c in self.children if c.name == name), None)

    def find(self, path: str) -> Node | None:
        head, _, rest = path.partition(".")
        node = self.child(head)
        return node.find(rest) if node and rest else node


@dataclass
class LogicalDevice:
    inst: str
    line: int | None = None
    lns: list[LogicalNode] = field(default_factory=list)

    def ln(self, name: str) -> LogicalNode | None:
        return next((ln for ln in self.lns if ln.name == name), None)


@dataclass
class IED:
    name: str
    line: int | None = None
    access_point: str = ""
    ldevices: list[LogicalDevice] = field(default_factory=list)

    def ld(self, inst: str) -> LogicalDevice | None:
        return next((ld for ld in self.ldevices if ld.inst == inst), None)


@dataclass
class SclModel:
    path: str
    version: str = ""
    revision: str = ""
    release: str = ""
    header_id: str = ""
    ieds: list[IED] = field(default_factory=list)
    addresses: dict = field(default_factory=dict)   # (ied, access point) -> {P type: text}
    enums: dict = field(default_factory=dict)       # EnumType id -> {literal: ord}

    def ied(self, name: str | None = None) -> IED | None:
        if name is None:
            return self.ieds[0] if self.ieds else None
        return next((i for i in self.ieds if i.name == name), None)
