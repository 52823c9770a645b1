"""Parse SCL (SCD, ICD, CID; editions 2003, 2007B and 2007B4) into a resolved `SclModel`.

Every type reference is resolved, every instance value (DOI/SDI/DAI) is applied and
checked against its basic type.  Every problem is reported with the file and line.
Elements of other namespaces (Private, vendor extensions) are ignored.

Each LNodeType is instantiated once: the logical nodes of a type share its DO, SDO, DA and
BDA nodes, and a node an instance gives a value (DOI/SDI/DAI) is copied, with its parents,
for that instance only.  So parsing takes time in the size of the file, not of the model it
describes (a 100-DER site: 4,100 logical nodes, 1.3 million attributes; bench/
mms_startup_bench.py).  The nodes of a parsed model are therefore not to be changed.
"""
from __future__ import annotations

import copy
import math
import re
from datetime import datetime
from pathlib import Path

from lxml import etree

from relevent.problems import Problem, ProblemsError
from relevent.scl.model import (
    FCDA, IED, TRG_DCHG, TRG_DUPD, TRG_QCHG, DataSet, LogicalDevice, LogicalNode, Node, ReportControl,
    SclModel,
)

NS = "http://www.iec.ch/61850/2003/SCL"
INT_RANGES = {"INT8": (-2**7, 2**7 - 1), "INT16": (-2**15, 2**15 - 1), "INT32": (-2**31, 2**31 - 1),
              "INT64": (-2**63, 2**63 - 1), "INT8U": (0, 2**8 - 1), "INT16U": (0, 2**16 - 1),
              "INT24U": (0, 2**24 - 1), "INT32U": (0, 2**32 - 1)}
STRING_LENGTHS = {"VisString32": 32, "VisString64": 64, "VisString65": 65, "VisString129": 129,
                  "VisString255": 255, "Unicode255": 255, "ObjRef": 129, "Octet64": 64}
KNOWN_BTYPES = {"BOOLEAN", "FLOAT32", "FLOAT64", "Enum", "Struct", "Dbpos", "Tcmd", "Quality", "Timestamp",
                "EntryTime", "Check", "Currency", "PhyComAddr", "TrgOps", "OptFlds", "SvOptFlds", "LogOptFlds",
                "EntryID", "Octet6", "Octet16", "INT128"} | set(INT_RANGES) | set(STRING_LENGTHS)


class SclError(ProblemsError):
    pass


def _local(el) -> str | None:
    if not isinstance(el.tag, str):
        return None
    q = etree.QName(el)
    return q.localname if q.namespace in (NS, None) else None


def _children(el, name: str):
    return [c for c in el if _local(c) == name]


def _child(el, name: str):
    return next(iter(_children(el, name)), None)


def _val(el) -> str | None:
    v = _child(el, "Val")
    return None if v is None else (v.text or "")


class _Parser:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.lntypes: dict = {}
        self.dotypes: dict = {}
        self.datypes: dict = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.instantiated: dict[str, list[Node]] = {}  # LNodeType id -> its DOs, shared by its LNs

    def problem(self, el, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, getattr(el, "sourceline", None), key, message))

    def need(self, el, attr: str, where: str) -> str:
        value = el.get(attr)
        if value is None or value == "":
            self.problem(el, where, f"missing attribute '{attr}'")
            return ""
        return value

    # -- templates -------------------------------------------------------------------------
    def templates(self, root) -> None:
        dtt = _child(root, "DataTypeTemplates")
        if dtt is None:
            self.problem(root, "SCL", "no DataTypeTemplates section")
            return
        for kind, table in (("LNodeType", self.lntypes), ("DOType", self.dotypes), ("DAType", self.datypes)):
            for el in _children(dtt, kind):
                type_id = self.need(el, "id", kind)
                if type_id in table:
                    self.problem(el, f"{kind} {type_id}", f"duplicate id (first at line {table[type_id].sourceline})")
                elif type_id:
                    table[type_id] = el
        for el in _children(dtt, "EnumType"):
            type_id = self.need(el, "id", "EnumType")
            if type_id in self.enums:
                self.problem(el, f"EnumType {type_id}", "duplicate id")
                continue
            literals: dict[str, int] = {}
            for ev in _children(el, "EnumVal"):
                try:
                    literals[(ev.text or "").strip()] = int(ev.get("ord", ""))
                except ValueError:
                    self.problem(ev, f"EnumType {type_id}", f"EnumVal ord {ev.get('ord')!r} is not an integer")
            self.enums[type_id] = literals

    def _count(self, el, where: str) -> int:
        text = el.get("count", "0") or "0"
        if not text.isdigit():
            self.problem(el, where, f"count {text!r} is not a number")
            return 0
        return int(text)

    def do_node(self, name: str, type_id: str, kind: str, el, stack: tuple) -> Node:
        where = f"{kind} {name}"
        node = Node(name, kind, el.sourceline, type_id=type_id, count=self._count(el, where))
        dotype = self.dotypes.get(type_id)
        if dotype is None:
            self.problem(el, where, f"DOType {type_id!r} is not defined")
            return node
        if type_id in stack:
            self.problem(el, where, f"DOType {type_id!r} contains itself")
            return node
        node.cdc = dotype.get("cdc")
        for sub in dotype:
            local = _local(sub)
            if local == "SDO":
                node.children.append(self.do_node(self.need(sub, "name", "SDO"), self.need(sub, "type", "SDO"),
                                                  "SDO", sub, stack + (type_id,)))
            elif local == "DA":
                node.children.append(self.da_node(sub, "DA", self.need(sub, "fc", "DA"), stack + (type_id,)))
        return node

    def da_node(self, el, kind: str, fc: str, stack: tuple) -> Node:
        name = self.need(el, "name", kind)
        btype = self.need(el, "bType", f"{kind} {name}")
        where = f"{kind} {name}"
        trg = (TRG_DCHG if el.get("dchg") == "true" else 0) | (TRG_QCHG if el.get("qchg") == "true" else 0) \
            | (TRG_DUPD if el.get("dupd") == "true" else 0)
        node = Node(name, kind, el.sourceline, fc=fc, btype=btype, type_id=el.get("type"),
                    count=self._count(el, where), trg=trg, value=_val(el))
        if btype and btype not in KNOWN_BTYPES:
            self.problem(el, where, f"unknown bType {btype!r}")
        if btype == "Struct":
            datype = self.datypes.get(node.type_id or "")
            if datype is None:
                self.problem(el, where, f"DAType {node.type_id!r} is not defined")
            elif node.type_id in stack:
                self.problem(el, where, f"DAType {node.type_id!r} contains itself")
            else:
                node.children = [self.da_node(b, "BDA", fc, stack + (node.type_id,)) for b in _children(datype, "BDA")]
                for bda in node.walk():  # triggers live on the DA; libiec61850 checks the leaves
                    bda.trg |= node.trg
        elif btype == "Enum" and (node.type_id or "") not in self.enums:
            self.problem(el, where, f"EnumType {node.type_id!r} is not defined")
        if node.value is not None:
            self.check_value(node, _child(el, "Val"))
        return node

    # -- values ------------------------------------------------------------------------------
    def check_value(self, node: Node, el, where: str | None = None) -> None:
        v, bt, where = node.value.strip(), node.btype, where or f"{node.kind} {node.name}"
        bad = None
        if bt == "BOOLEAN" and v not in ("true", "false", "0", "1"):
            bad = "expected true or false"
        elif bt in INT_RANGES:
            lo, hi = INT_RANGES[bt]
            if not re.fullmatch(r"[+-]?\d+", v) or not lo <= int(v) <= hi:
                bad = f"expected an integer in {lo}..{hi}"
        elif bt in ("FLOAT32", "FLOAT64"):
            try:
                f = float(v)
                if bt == "FLOAT32" and math.isfinite(f) and abs(f) > 3.4028235e38:
                    bad = "out of FLOAT32 range"
            except ValueError:
                bad = "expected a number"
        elif bt == "Enum" and node.type_id in self.enums:
            literals = self.enums[node.type_id]
            if v not in literals and not (re.fullmatch(r"[+-]?\d+", v) and int(v) in literals.values()):
                bad = f"{v!r} is not a literal of EnumType {node.type_id}"
        elif bt == "Timestamp":
            try:
                datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                bad = "expected an ISO 8601 time such as 2024-01-01T00:00:00Z"
        elif bt in STRING_LENGTHS and len(v.encode()) > STRING_LENGTHS[bt]:
            bad = f"longer than {STRING_LENGTHS[bt]} bytes"
        if bad:
            self.problem(el, where, f"value {node.value!r}: {bad}")

    def apply_instance(self, target: Node | LogicalNode, el, where: str, own: dict[int, Node]) -> None:
        """DOI/SDI/DAI under `el` set values inside `target`, whose children list is its
        own.  A child that gets a value is first copied for this instance (`own`: the
        copies made for it so far, by id)."""
        for sub in el:
            local = _local(sub)
            if local not in ("DOI", "SDI", "DAI"):
                continue
            name = sub.get("name", "")
            path = f"{where}.{name}" if where else name
            index = next((i for i, c in enumerate(target.children) if c.name == name), None)
            if index is None:
                self.problem(sub, path, f"{local} names {name!r}, which its type does not have")
                continue
            child = target.children[index]
            if local == "DAI" and child.kind not in ("DA", "BDA"):
                self.problem(sub, path, f"DAI names {name!r}, which is not a data attribute")
                continue
            if id(child) not in own:  # shared with the type's other instances: copy it
                child = copy.copy(child)
                child.children = list(child.children)
                own[id(child)] = target.children[index] = child
            if local == "DAI":
                value = _val(sub)
                if value is not None and sub.get("ix") is None:
                    val_el = _child(sub, "Val")
                    child.value, child.line = value, val_el.sourceline
                    self.check_value(child, val_el, path)
            else:
                self.apply_instance(child, sub, path, own)

    # -- instances ------------------------------------------------------------------------
    def logical_node(self, el, ld: str) -> LogicalNode:
        is_ln0 = _local(el) == "LN0"
        ln = LogicalNode(el.get("prefix", "") or "", self.need(el, "lnClass", "LN"),
                         "" if is_ln0 else (el.get("inst", "") or ""), self.need(el, "lnType", "LN"),
                         el.get("desc", ""), el.sourceline)
        where = f"{ld}/{ln.name}"
        lntype = self.lntypes.get(ln.ln_type)
        if lntype is None:
            self.problem(el, where, f"LNodeType {ln.ln_type!r} is not defined")
            return ln
        if lntype.get("lnClass") and lntype.get("lnClass") != ln.ln_class:
            self.problem(el, where, f"LNodeType {ln.ln_type!r} is for lnClass {lntype.get('lnClass')}, "
                                    f"not {ln.ln_class}")
        shared = self.instantiated.get(ln.ln_type)
        if shared is None:
            shared = self.instantiated[ln.ln_type] = [
                self.do_node(self.need(d, "name", "DO"), self.need(d, "type", "DO"), "DO", d, ())
                for d in _children(lntype, "DO")]
        ln.children = list(shared)
        self.apply_instance(ln, el, where, {})
        ln.datasets = [self.dataset(ds, where) for ds in _children(el, "DataSet")]
        ln.reports = [self.report(rc, where) for rc in _children(el, "ReportControl")]
        return ln

    def dataset(self, el, where: str) -> DataSet:
        members = [FCDA(f.get("ldInst", ""), f.get("prefix", "") or "", f.get("lnClass", ""), f.get("lnInst", "") or "",
                        f.get("doName", ""), f.get("daName", "") or "", self.need(f, "fc", f"{where} FCDA"))
                   for f in _children(el, "FCDA")]
        return DataSet(self.need(el, "name", f"{where} DataSet"), members, el.sourceline)

    def report(self, el, where: str) -> ReportControl:
        name = self.need(el, "name", f"{where} ReportControl")
        trg_el, opt_el, rpt_el = _child(el, "TrgOps"), _child(el, "OptFields"), _child(el, "RptEnabled")
        bits = lambda e, names: sum(1 << i for i, n in enumerate(names) if e is not None and e.get(n) == "true")
        trg = bits(trg_el, ("dchg", "qchg", "dupd", "period", "gi"))
        opt = bits(opt_el, ("seqNum", "timeStamp", "reasonCode", "dataSet", "dataRef", "bufOvfl", "entryID",
                            "configRef"))

        def number(attr: str, default: int) -> int:
            text = el.get(attr, str(default))
            if not text.isdigit():
                self.problem(el, f"{where} ReportControl {name}", f"{attr} {text!r} is not a number")
                return default
            return int(text)
        return ReportControl(name, el.get("datSet", ""), el.get("rptID", ""), el.get("buffered") == "true",
                             number("confRev", 1), number("intgPd", 0), number("bufTime", 0), trg, opt,
                             int(rpt_el.get("max", "1")) if rpt_el is not None and
                             rpt_el.get("max", "1").isdigit() else 1, el.sourceline)

    def ied(self, el) -> IED:
        ied = IED(self.need(el, "name", "IED"), el.sourceline)
        for ap in _children(el, "AccessPoint"):
            server = _child(ap, "Server")
            if server is None:
                continue
            ied.access_point = ied.access_point or ap.get("name", "")
            for ld_el in _children(server, "LDevice"):
                ld = LogicalDevice(self.need(ld_el, "inst", "LDevice"), ld_el.sourceline)
                where = f"{ied.name}{ld.inst}"
                ln0 = _child(ld_el, "LN0")
                if ln0 is None:
                    self.problem(ld_el, where, "LDevice without LN0")
                ld.lns = [self.logical_node(e, where) for e in ld_el if _local(e) in ("LN0", "LN")]
                seen: dict[str, int | None] = {}
                for ln in ld.lns:
                    if ln.name in seen:
                        self.problems.append(Problem(self.file, ln.line, f"{where}/{ln.name}",
                                                     f"duplicate logical node (first at line {seen[ln.name]})"))
                    seen.setdefault(ln.name, ln.line)
                ied.ldevices.append(ld)
        return ied

    def communication(self, root) -> dict:
        out = {}
        comm = _child(root, "Communication")
        for subnet in _children(comm, "SubNetwork") if comm is not None else []:
            for cap in _children(subnet, "ConnectedAP"):
                addr = _child(cap, "Address")
                params = {p.get("type"): (p.text or "") for p in _children(addr, "P")} if addr is not None else {}
                out[(cap.get("iedName", ""), cap.get("apName", ""))] = params
        return out


def parse_scl(path: str | Path) -> SclModel:
    """Parse and resolve an SCL file; raise SclError with every problem found."""
    path = Path(path)
    try:
        tree = etree.parse(str(path), etree.XMLParser(remove_blank_text=False, resolve_entities=False,
                                                      no_network=True))
    except OSError as exc:
        raise SclError([Problem(str(path), None, "", f"cannot read: {exc}")]) from None
    except etree.XMLSyntaxError as exc:
        raise SclError([Problem(str(path), exc.lineno, "", f"XML syntax: {exc.msg}")]) from None
    root = tree.getroot()
    p = _Parser(str(path))
    if etree.QName(root).localname != "SCL" or etree.QName(root).namespace != NS:
        raise SclError([Problem(str(path), root.sourceline, "", f"root element is not SCL in namespace {NS}")])
    p.templates(root)
    header = _child(root, "Header")
    model = SclModel(str(path), root.get("version", "2003"), root.get("revision", ""), root.get("release", ""),
                     header.get("id", "") if header is not None else "")
    if header is None:
        p.problem(root, "SCL", "no Header")
    model.ieds = [p.ied(el) for el in _children(root, "IED")]
    model.addresses = p.communication(root)
    model.enums = p.enums
    if not model.ieds:
        p.problem(root, "SCL", "no IED")
    if p.problems:
        raise SclError(p.problems)
    return model
