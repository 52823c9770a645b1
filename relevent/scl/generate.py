"""Generate the IEC 61850-90-10 scheduling model for the DERs of a topology, as SCL.

The layout, names, types, FCs and initial values are those of the ReLevENT reference model
(templates/der-scheduler.cid, Apache-2.0, from the ReLevENT project): per control function
an actuator <Kind>_GGIO1, a controller <Kind>_FSCC1, schedules <Kind>_FSCH01..NN and a
reserve <Kind>_Res_FSCH01.  Per DER: one logical device; the number of schedules and of
value slots per schedule come from the topology (types are derived where they differ).
A DER driven over a LAN endpoint also gets an MMXU1 with the device's measured TotW.
"""
from __future__ import annotations

import copy
from datetime import datetime, timezone
from importlib import resources

from lxml import etree

from relevent import __version__
from relevent.scl.parser import NS

Q = "{%s}" % NS
TEMPLATE_LD = "Control"
VALUE_DO = {"ASG": "ValASG", "SPG": "ValSPG"}


def default_ld_inst(der: dict, der_count: int) -> str:
    return der.get("ld_inst") or ("Control" if der_count == 1 else f"{der['name']}Control")


def _template() -> etree._ElementTree:
    data = resources.files("relevent.scl").joinpath("templates/der-scheduler.cid").read_bytes()
    return etree.ElementTree(etree.fromstring(data, etree.XMLParser(remove_blank_text=True)))


def _find(parent, tag: str, **attrs):
    for el in parent.iter(Q + tag):
        if all(el.get(k, "") == v for k, v in attrs.items()):
            return el
    raise KeyError(f"template has no {tag} {attrs}")


class _Types:
    """Derived LNodeTypes (fewer value slots, another number of schedules), made once."""

    def __init__(self, dtt) -> None:
        self.dtt = dtt
        self.made: dict[str, str] = {}

    def lntype(self, base_id: str, new_id: str, keep) -> str:
        if new_id == base_id or new_id in self.made:
            return new_id
        base = _find(self.dtt, "LNodeType", id=base_id)
        clone = copy.deepcopy(base)
        clone.set("id", new_id)
        for do in list(clone):
            if not keep(do.get("name", "")):
                clone.remove(do)
        base.addnext(clone)
        self.made[new_id] = base_id
        return new_id

    def fsch(self, base_id: str, values: int) -> str:
        if values == 100:
            return base_id
        kind = "ASG" if "_ASG_" in base_id else "SPG"
        prefix = VALUE_DO[kind]
        return self.lntype(base_id, base_id.replace("_100_", f"_{values}_"),
                           lambda name: not name.startswith(prefix) or int(name[len(prefix):]) <= values)

    def mmxu(self) -> str:
        """Measurements of a device (total active power), for DERs with a LAN endpoint."""
        new_id = "relevent_MMXU"
        if new_id not in self.made:
            ggio = _find(self.dtt, "LNodeType", id="DERScheduler_GGIO_OnOff")
            mmxu = etree.Element(Q + "LNodeType", id=new_id, lnClass="MMXU")
            etree.SubElement(mmxu, Q + "DO", name="Beh", type="ENS_Beh_On")
            etree.SubElement(mmxu, Q + "DO", name="TotW", type="relevent_MV_W")
            ggio.addnext(mmxu)
            # The template's MV says kW; measurements are in W, so this MV has no kW units.
            mv = copy.deepcopy(_find(self.dtt, "DOType", id="DERScheduler_MV_ValMV"))
            mv.set("id", "relevent_MV_W")
            for da in mv.findall(f"{Q}DA[@name='units']"):
                mv.remove(da)
            _find(self.dtt, "DOType", id="DERScheduler_MV_ValMV").addnext(mv)
            self.made[new_id] = "DERScheduler_GGIO_OnOff"
        return new_id

    def fscc(self, base_id: str, schedules: int) -> str:
        if schedules == 10:
            return base_id
        new_id = f"{base_id}_{schedules}"
        if new_id not in self.made:
            self.lntype(base_id, new_id, lambda name: not name.startswith("Schd"))
            clone = _find(self.dtt, "LNodeType", id=new_id)
            schd_type = _find(self.dtt, "LNodeType", id=base_id).find(f"{Q}DO[@name='Schd01']").get("type")
            for n in range(1, schedules + 2):
                clone.append(etree.Element(Q + "DO", name=f"Schd{n:02d}", type=schd_type))
        return new_id


def _set_src_ref(ln, do_name: str, value: str) -> None:
    doi = etree.SubElement(ln, Q + "DOI", name=do_name)
    dai = etree.SubElement(doi, Q + "DAI", name="setSrcRef")
    etree.SubElement(dai, Q + "Val").text = value


def _logical_device(tpl_ld, der: dict, ld_inst: str, types: _Types):
    ld = etree.Element(Q + "LDevice", inst=ld_inst, desc=f"DER {der['name']}")
    ln0 = copy.deepcopy(tpl_ld.find(Q + "LN0"))
    # The name plate says which software serves it (a client can read LLN0.NamPlt.swRev).
    plate = ln0.find(f"{Q}DOI[@name='NamPlt']")
    for name, text in (("vendor", "relevent"), ("swRev", __version__), ("d", f"relevent DER {der['name']}")):
        plate.find(f"{Q}DAI[@name='{name}']/{Q}Val").text = text
    ld.append(ln0)
    ld.append(copy.deepcopy(_find(tpl_ld, "LN", lnClass="LPHD")))
    n, values = der["schedules"], der.get("values", 100)
    kinds = [f"{kind}_" for kind in der["functions"]]
    # The reference order: every actuator, every controller, then each kind's schedules.
    for prefix in kinds:
        ld.append(copy.deepcopy(_find(tpl_ld, "LN", lnClass="GGIO", prefix=prefix)))
    if der.get("lan"):
        # The device's measured power (W), from its LAN endpoint; quality invalid while unreachable.
        etree.SubElement(ld, Q + "LN", lnClass="MMXU", inst="1", lnType=types.mmxu(), prefix="",
                         desc="device measurements")
    for prefix in kinds:
        fscc = copy.deepcopy(_find(tpl_ld, "LN", lnClass="FSCC", prefix=prefix))
        fscc.set("lnType", types.fscc(fscc.get("lnType"), n))
        actuator = fscc.find(f"{Q}DOI[@name='CtlEnt']/{Q}DAI/{Q}Val").text.split("/", 1)[1]
        for doi in fscc.findall(Q + "DOI"):
            fscc.remove(doi)
        ctl = etree.SubElement(fscc, Q + "DOI", name="CtlEnt", desc="controlled entity")
        etree.SubElement(etree.SubElement(ctl, Q + "DAI", name="setSrcRef"), Q + "Val").text = f"@{ld_inst}/{actuator}"
        for i in range(1, n + 1):
            _set_src_ref(fscc, f"Schd{i:02d}", f"@{ld_inst}/{prefix}FSCH{i:02d}")
        _set_src_ref(fscc, f"Schd{n + 1:02d}", f"@{ld_inst}/{prefix}Res_FSCH01")
        ld.append(fscc)
    for prefix in kinds:
        schedule = _find(tpl_ld, "LN", lnClass="FSCH", prefix=prefix, inst="01")
        for i in range(1, n + 1):
            ln = copy.deepcopy(schedule)
            ln.set("inst", f"{i:02d}")
            ln.set("lnType", types.fsch(ln.get("lnType"), values))
            ld.append(ln)
        reserve = copy.deepcopy(_find(tpl_ld, "LN", lnClass="FSCH", prefix=f"{prefix}Res_"))
        reserve.set("lnType", types.fsch(reserve.get("lnType"), values))
        ld.append(reserve)
    return ld


def generate_scl(ders: list[dict], ied_name: str = "DER_Scheduler_", site: str = "site",
                 address: str = "0.0.0.0") -> bytes:
    """SCL (2007B4) for `ders` (normalised topology DER tables)."""
    tree = _template()
    root = tree.getroot()
    header = root.find(Q + "Header")
    header.set("id", f"{site}-{ied_name}")
    history = header.find(Q + "History")
    if history is None:
        history = etree.SubElement(header, Q + "History")
    etree.SubElement(history, Q + "Hitem", version="1", revision="1", who="relevent",
                     what=f"generated for site {site}",
                     when=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    cap = root.find(f"{Q}Communication/{Q}SubNetwork/{Q}ConnectedAP")
    cap.set("iedName", ied_name)
    for p in cap.iter(Q + "P"):
        if p.get("type") == "IP":
            p.text = address
    ied = root.find(Q + "IED")
    ied.set("name", ied_name)
    server = ied.find(f"{Q}AccessPoint/{Q}Server")
    tpl_ld = server.find(f"{Q}LDevice[@inst='{TEMPLATE_LD}']")
    server.remove(tpl_ld)
    types = _Types(root.find(Q + "DataTypeTemplates"))
    for der in ders:
        server.append(_logical_device(tpl_ld, der, default_ld_inst(der, len(ders)), types))
    etree.indent(tree, space="\t")
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)
