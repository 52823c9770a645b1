"""Where schedule and controller state lives in the 90-10 model, and the updates that
bring the model from one published state to the next (only what changed)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from relevent.iec61850.lib import QUALITY_GOOD, QUALITY_INVALID, QUALITY_QUESTIONABLE


@dataclass(frozen=True)
class ScheduleRefs:
    ied: str
    ld: str
    der: str
    kind: str
    name: str        # FSCH01 .. or Res_FSCH01

    @property
    def key(self) -> tuple:
        return (self.der, self.kind, self.name)

    @property
    def reserve(self) -> bool:
        return self.name.startswith("Res_")

    @property
    def ln(self) -> str:
        return f"{self.kind}_{self.name}"

    @property
    def ln_ref(self) -> str:
        return f"{self.ld}/{self.ln}"

    def attr(self, path: str) -> str:
        return f"{self.ld}/{self.ln}.{path}"


def _status(ref: str, kind: str, value, at: int, good: bool = True) -> list:
    return [(f"{ref}.stVal", kind, value), (f"{ref}.q", "quality", QUALITY_GOOD if good else QUALITY_INVALID),
            (f"{ref}.t", "time", at)]


def schedule_updates(refs: ScheduleRefs, old: dict | None, new: dict, at: int, settings_changed: bool = True,
                     pristine: dict | None = None) -> list:
    """Model updates for one schedule (status and settings merged in one dict); `old` None
    means write everything, except, given `pristine` (the settings as the model holds them
    since it was built: `pristine_settings`), the settings equal to them.  Start times are
    written whatever they were (a write sets their TimeQuality)."""
    out: list = []

    def changed(*keys: str) -> bool:
        return old is None or any(old.get(k) != new.get(k) for k in keys)

    if changed("state"):
        out += _status(refs.attr("SchdSt"), "int", new["state"], at)
    if changed("ena_err"):
        out += _status(refs.attr("SchdEnaErr"), "int", new["ena_err"], at)
    if changed("entry"):
        out += _status(refs.attr("SchdEntr"), "int", new["entry"], at)
    if changed("act_start"):
        out += _status(refs.attr("ActStrTm"), "time", new["act_start"] or 0, at, new["act_start"] is not None)
    if changed("next_start"):
        out += _status(refs.attr("NxtStrTm"), "time", new["next_start"] or 0, at, new["next_start"] is not None)
    if changed("value", "state"):
        value, good = new["value"], new["value"] is not None
        if new["boolean"]:
            out += [(refs.attr("ValSPS.stVal"), "bool", bool(value))] if good else []
            out += [(refs.attr("ValSPS.q"), "quality", QUALITY_GOOD if good else QUALITY_INVALID),
                    (refs.attr("ValSPS.t"), "time", at)]
        else:
            out += [(refs.attr("ValMV.mag.f"), "float", float(value))] if good else []
            out += [(refs.attr("ValMV.q"), "quality", QUALITY_GOOD if good else QUALITY_INVALID),
                    (refs.attr("ValMV.t"), "time", at)]
    if not settings_changed:
        return out
    # Settings: after a restart of the endpoint, the model is rebuilt from the controller.
    before = old if old is not None else pristine
    for field, attr, kind in SETTING_ATTRS:
        if before is None or before.get(field, _UNKNOWN) != new[field]:
            out.append((refs.attr(attr), kind, new[field]))
    prefix, slot = ("ValSPG", "setVal") if new["boolean"] else ("ValASG", "setMag.f")
    old_values = list(before["values"]) if before else []
    old_values += [_UNKNOWN] * (len(new["values"]) - len(old_values))   # slots added since: written
    for i, (a, b) in enumerate(zip(old_values, new["values"]), start=1):
        if before is None or a != b and not (a != a and b != b):  # NaN == NaN here (not _UNKNOWN)
            out.append((refs.attr(f"{prefix}{i:03d}.{slot}"), "bool" if new["boolean"] else "float", b))
    # Start times are written whenever settings changed, equal or not: a client may write
    # more precision than the schedule keeps (ms), and the model must show what is kept.
    for i, b in enumerate(new["starts"], start=1):
        out.append((refs.attr(f"StrTm{i:02d}.setTm"), "time_exact", b[0] or 0))
    return out


def controller_updates(ied: str, ld: str, kind: str, output: tuple, at: int) -> list:
    """FSCC (active schedule and value) and the actuator GGIO output."""
    value, source, _start = output
    good = source is not None
    active = f"{ied}{ld}/{kind}_{source}" if good else ""
    out = _status(f"{ld}/{kind}_FSCC1.ActSchdRef", "string", active, at, good)
    if kind == "OnOff":
        out += ([(f"{ld}/{kind}_FSCC1.ValSPS.stVal", "bool", bool(value))] if good else [])
        out += [(f"{ld}/{kind}_FSCC1.ValSPS.q", "quality", QUALITY_GOOD if good else QUALITY_INVALID),
                (f"{ld}/{kind}_FSCC1.ValSPS.t", "time", at)]
        out += _status(f"{ld}/{kind}_GGIO1.SPCSO1", "bool", bool(value), at, good)
    else:
        out += ([(f"{ld}/{kind}_FSCC1.ValMV.mag.f", "float", float(value))] if good else [])
        out += [(f"{ld}/{kind}_FSCC1.ValMV.q", "quality", QUALITY_GOOD if good else QUALITY_INVALID),
                (f"{ld}/{kind}_FSCC1.ValMV.t", "time", at)]
        out += ([(f"{ld}/{kind}_GGIO1.AnOut1.mxVal.f", "float", float(value))] if good else [])
        out += [(f"{ld}/{kind}_GGIO1.AnOut1.q", "quality", QUALITY_GOOD if good else QUALITY_INVALID),
                (f"{ld}/{kind}_GGIO1.AnOut1.t", "time", at)]
    return out


def measurement_updates(ld: str, w: float | None, validity: str, at: int) -> list:
    """MMXU1.TotW of a DER's device (W); invalid while the device is unreachable."""
    good = w is not None and validity == "good"
    quality = QUALITY_GOOD if good else QUALITY_QUESTIONABLE if validity == "questionable" and w is not None \
        else QUALITY_INVALID
    out = [(f"{ld}/MMXU1.TotW.mag.f", "float", float(w))] if w is not None else []
    return out + [(f"{ld}/MMXU1.TotW.q", "quality", quality), (f"{ld}/MMXU1.TotW.t", "time", at)]


# The four single-valued settings: Schedule's field, the attribute a client writes, its type.
SETTING_ATTRS = (("num_entr", "NumEntr.setVal", "int"), ("schd_intv", "SchdIntv.setVal", "int"),
                 ("prio", "SchdPrio.setVal", "int"), ("reuse", "SchdReuse.setVal", "bool"))
SETTINGS = {attr.partition(".")[0]: kind for _field, attr, kind in SETTING_ATTRS}   # DO name -> type
_ZERO = {"int": 0, "bool": False, "float": 0.0}   # libiec61850's value of an attribute the text leaves unset
_UNKNOWN = object()   # a model value not known here: unequal to every value, so always written


@functools.lru_cache(maxsize=64)
def pristine_settings(kind: str, initialised: frozenset[str], slots: int) -> dict:
    """The settings of a `kind` schedule's logical node as libiec61850 built it: an attribute
    the model text gives no value is the zero of its type, one it gives a value is not
    known here (so always written).  `initialised`: the node's attribute paths with a value
    in the text; `slots`: how many value attributes to describe.  Shared: read only."""
    out: dict[str, Any] = {field: _UNKNOWN if attr in initialised else _ZERO[type_]
                           for field, attr, type_ in SETTING_ATTRS}
    prefix, slot, type_ = ("ValSPG", "setVal", "bool") if kind == "OnOff" else ("ValASG", "setMag.f", "float")
    out["values"] = [_UNKNOWN if f"{prefix}{i:03d}.{slot}" in initialised else _ZERO[type_]
                     for i in range(1, slots + 1)]
    return out


def written_field(kind: str, path: str) -> tuple[str, int, str, bool] | None:
    """What a client's write to attribute `path` (`DO.DA`) of a `kind` schedule's logical node
    sets: (Schedule.write's field, its index, the value's type, whether the attribute is a
    structure whose components are written too), or None for an attribute no client sets.
    write_ref's inverse: its names only (ValASG007.setMag, not ValASG7: a name the model
    could not have is no field)."""
    do, dot, da = path.partition(".")
    if not dot:
        return None
    if do in SETTINGS:
        return (do, 0, SETTINGS[do], False) if da == "setVal" else None
    prefix, width, field, attr, value_type = (
        ("ValSPG", 3, "Val", "setVal", "bool") if kind == "OnOff" else ("ValASG", 3, "Val", "setMag", "float"))
    if not do.startswith(prefix):
        prefix, width, field, attr, value_type = "StrTm", 2, "StrTm", "setTm", "time"
        if not do.startswith(prefix):
            return None
    digits = do[len(prefix):]
    if da != attr or not digits.isdigit() or digits != f"{int(digits):0{width}d}" or int(digits) < 1:
        return None
    return field, int(digits), value_type, value_type == "float"


def write_ref(refs: ScheduleRefs, field: str, index: int) -> str:
    """The model attribute a client writes for a 90-10 field (Schedule.write's names)."""
    if field == "Val":
        return refs.attr(f"ValSPG{index:03d}.setVal" if refs.kind == "OnOff" else f"ValASG{index:03d}.setMag.f")
    if field == "StrTm":
        return refs.attr(f"StrTm{index:02d}.setTm")
    return refs.attr(f"{field}.setVal")
