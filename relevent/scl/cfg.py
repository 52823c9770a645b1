"""Write one IED of an `SclModel` as libiec61850's textual model (.cfg).

libiec61850 builds its dynamic model from this text (ConfigFileParser) as fast as from its
own SCL tooling, and without the generator the C project uses.  Types and functional
constraints are libiec61850's numeric codes; enumerations are written as ordinals,
booleans as 0/1; timestamps cannot carry initial values in this format.

The text of a DO or DA is made once per node object and reused: the parser shares the nodes
of logical nodes of one type (parser.py), so writing a 100-DER model (2 million lines) costs
about as much as writing its distinct types.
"""
from __future__ import annotations

import math

from relevent.problems import Problem, ProblemsError
from relevent.scl.model import IED, LogicalNode, Node, SclModel

FC_CODES = {"ST": 0, "MX": 1, "SP": 2, "SV": 3, "CF": 4, "DC": 5, "SG": 6, "SE": 7, "SR": 8, "OR": 9, "BL": 10,
            "EX": 11, "CO": 12, "US": 13, "MS": 14, "RP": 15, "BR": 16, "LG": 17, "GO": 18}
TYPE_CODES = {"BOOLEAN": 0, "INT8": 1, "INT16": 2, "INT32": 3, "INT64": 4, "INT128": 5, "INT8U": 6, "INT16U": 7,
              "INT24U": 8, "INT32U": 9, "FLOAT32": 10, "FLOAT64": 11, "Enum": 12, "Octet64": 13, "Octet16": 13,
              "Octet6": 14, "EntryID": 15, "VisString32": 16, "VisString64": 17, "VisString65": 18,
              "VisString129": 19, "ObjRef": 19, "VisString255": 20, "Unicode255": 21, "Timestamp": 22,
              "Quality": 23, "Check": 24, "Dbpos": 25, "Tcmd": 25, "SvOptFlds": 26, "LogOptFlds": 26, "Struct": 27,
              "EntryTime": 28, "PhyComAddr": 29, "Currency": 30, "OptFlds": 31, "TrgOps": 32}
STRING_TYPES = {"VisString32", "VisString64", "VisString65", "VisString129", "ObjRef", "VisString255",
                "Unicode255", "Currency"}
MAX_LINE = 1024


def _value(node: Node, enums: dict) -> str | None:
    """The initial value in libiec61850's notation, or None to leave it at its default."""
    v = node.value
    if v is None or node.btype in ("Timestamp", "Quality", "Struct", "Octet64", "Octet16", "Octet6", "EntryID"):
        return None
    v = v.strip()
    bt = node.btype
    if bt == "BOOLEAN":
        return "1" if v in ("true", "1") else "0"
    if bt == "Enum":
        literals = enums.get(node.type_id, {})
        return str(literals[v]) if v in literals else str(int(v))
    if bt in STRING_TYPES:
        return f'"{v}"'
    if bt in ("FLOAT32", "FLOAT64"):
        f = float(v)
        return "nan" if math.isnan(f) else repr(f)
    return str(int(v))


class _Writer:
    def __init__(self, model: SclModel) -> None:
        self.model = model
        self.lines: list[str] = []
        self.problems: list[Problem] = []
        self.made: dict[int, str] = {}  # id(node) -> its text (the model keeps every node alive)

    def emit(self, line: str, node: Node | None = None) -> None:
        if len(line) >= MAX_LINE:
            self.problems.append(Problem(self.model.path, node.line if node else None, node.name if node else "",
                                         f"line too long for libiec61850's model format ({len(line)} bytes)"))
        self.lines.append(line)

    def node(self, node: Node) -> None:
        text = self.made.get(id(node))
        if text is None:
            start = len(self.lines)
            self._node(node)
            text = self.made[id(node)] = "\n".join(self.lines[start:])
            del self.lines[start:]
        if text:
            self.lines.append(text)

    def _node(self, node: Node) -> None:
        if node.kind in ("DO", "SDO"):
            self.emit(f"DO({node.name} {node.count}){{", node)
            for child in node.children:
                self.node(child)
            self.emit("}")
            return
        code = TYPE_CODES.get(node.btype or "")
        if code is None:
            self.problems.append(Problem(self.model.path, node.line, node.name,
                                         f"bType {node.btype!r} cannot be served by libiec61850"))
            return
        head = f"DA({node.name} {node.count} {code} {FC_CODES.get(node.fc or '', 0)} {node.trg} 0)"
        if node.children:
            self.emit(head + "{", node)
            for child in node.children:
                self.node(child)
            self.emit("}")
        else:
            value = _value(node, self.model.enums)
            self.emit(f"{head}={value};" if value is not None else f"{head};", node)

    def logical_node(self, ln: LogicalNode, ld_inst: str) -> None:
        self.emit(f"LN({ln.name}){{")
        for child in ln.children:
            self.node(child)
        for ds in ln.datasets:
            self.emit(f"DS({ds.name}){{")
            for m in ds.members:
                ref = f"{m.prefix}{m.ln_class}{m.ln_inst}${m.fc}${m.do_name.replace('.', '$')}"
                if m.da_name:
                    ref += "$" + m.da_name.replace(".", "$")
                self.emit(f"DE({m.ld_inst or ld_inst}/{ref});")
            self.emit("}")
        for rc in ln.reports:
            self.emit(f"RC({rc.name} {rc.rpt_id or '-'} {int(rc.buffered)} {rc.dataset or '-'} {rc.conf_rev} "
                      f"{rc.trg_ops} {rc.opt_fields} {rc.buf_time} {rc.intg_pd});")
        self.emit("}")


def to_cfg(model: SclModel, ied_name: str | None = None) -> str:
    """The .cfg text for one IED (the first if none is named)."""
    ied: IED | None = model.ied(ied_name)
    if ied is None:
        raise ProblemsError([Problem(model.path, None, "", f"no IED named {ied_name!r}")])
    w = _Writer(model)
    w.emit(f"MODEL({ied.name}){{")
    for ld in ied.ldevices:
        w.emit(f"LD({ld.inst}){{")
        for ln in ld.lns:
            w.logical_node(ln, ld.inst)
        w.emit("}")
    w.emit("}")
    if w.problems:
        raise ProblemsError(w.problems)
    return "\n".join(w.lines) + "\n"
