"""SCL: parse the reference model, generate the model of a topology, round trip, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from relevent import __version__
from relevent.scl.cfg import to_cfg
from relevent.scl.generate import generate_scl
from relevent.scl.parser import NS, SclError, parse_scl
from relevent.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference" / "relevent-der-model.cid"
TEMPLATE = REPO / "relevent" / "scl" / "templates" / "der-scheduler.cid"
needs_reference = pytest.mark.skipif(not REFERENCE.exists(), reason="../shared/reference is not here")


@pytest.fixture(scope="module")
def reference_source() -> Path:
    return REFERENCE if REFERENCE.exists() else TEMPLATE


def test_reference_model_loads_with_every_type_resolved(reference_source):
    model = parse_scl(reference_source)
    ied = model.ied()
    assert (ied.name, ied.access_point, model.version, model.revision, model.release) == \
        ("DER_Scheduler_", "AccessPoint1", "2007", "B", "4")
    ld = ied.ld("Control")
    assert len(ld.lns) == 41
    res = ld.ln("ActPow_Res_FSCH01")
    expect = {"NumEntr.setVal": ("SP", "INT32", "1"), "SchdIntv.setVal": ("SP", "INT32", "3600"),
              "SchdPrio.setVal": ("SP", "INT32", "10"), "ValASG001.setMag.f": ("SP", "FLOAT32", "11"),
              "StrTm01.setTm": ("SP", "Timestamp", "1970-01-01T00:00:01Z"),
              "StrTm01.setCal.occPer": ("SP", "Enum", "Hour"), "EnaReq.ctlModel": ("CF", "Enum",
                                                                                   "direct-with-normal-security"),
              "SchdSt.stVal": ("ST", "Enum", None), "ValMV.mag.f": ("MX", "FLOAT32", None)}
    for path, (fc, btype, value) in expect.items():
        node = res.find(path)
        assert (node.fc, node.btype, node.value) == (fc, btype, value), path
    assert ld.ln("OnOff_FSCC1").find("Schd11.setSrcRef").value == "@Control/OnOff_Res_FSCH01"
    assert model.addresses[("DER_Scheduler_", "AccessPoint1")]["IP"] == "0.0.0.0"


@needs_reference
def test_packaged_template_is_the_reference_model():
    assert TEMPLATE.read_bytes() == REFERENCE.read_bytes()


def test_generated_reference_topology_is_the_reference_model(tmp_path, reference_source):
    topo = load_topology(REPO / "topologies" / "reference.toml", env={})
    path = tmp_path / "gen.cid"
    path.write_bytes(generate_scl(topo.data["der"], site="reference"))
    # Same LNs, DOs, DAs, FCs, types, triggers and initial values, in the same order; one
    # difference by design: each LLN0's name plate names relevent and its version.
    reference = etree.parse(str(reference_source))
    for plate in reference.iterfind(f".//{{{NS}}}LN0/{{{NS}}}DOI[@name='NamPlt']"):
        for name, text in (("vendor", "relevent"), ("swRev", __version__), ("d", "relevent DER der1")):
            plate.find(f"{{{NS}}}DAI[@name='{name}']/{{{NS}}}Val").text = text
    expected = tmp_path / "reference-with-our-name-plate.cid"
    reference.write(str(expected))
    assert to_cfg(parse_scl(path)) == to_cfg(parse_scl(expected))


def test_generation_follows_the_topology(tmp_path):
    ders = [{"name": "pv1", "functions": ["ActPow", "MaxPow", "OnOff"], "schedules": 10, "values": 100},
            {"name": "bat", "functions": ["OnOff"], "schedules": 3, "values": 5, "ld_inst": "Battery"}]
    path = tmp_path / "site.cid"
    path.write_bytes(generate_scl(ders, ied_name="SITE_", site="s", address="127.0.0.1"))
    model = parse_scl(path)
    ied = model.ied()
    assert ied.name == "SITE_" and [ld.inst for ld in ied.ldevices] == ["pv1Control", "Battery"]
    bat = ied.ld("Battery")
    assert [ln.name for ln in bat.lns] == ["LLN0", "LPHD1", "OnOff_GGIO1", "OnOff_FSCC1", "OnOff_FSCH01",
                                           "OnOff_FSCH02", "OnOff_FSCH03", "OnOff_Res_FSCH01"]
    fsch = bat.ln("OnOff_FSCH02")
    assert [c.name for c in fsch.children if c.name.startswith("ValSPG")] == [f"ValSPG00{i}" for i in range(1, 6)]
    fscc = bat.ln("OnOff_FSCC1")
    assert [c.name for c in fscc.children if c.name.startswith("Schd")] == ["Schd01", "Schd02", "Schd03", "Schd04"]
    assert fscc.find("Schd04.setSrcRef").value == "@Battery/OnOff_Res_FSCH01"
    assert fscc.find("CtlEnt.setSrcRef").value == "@Battery/OnOff_GGIO1.SPCSO1"
    assert ied.ld("pv1Control").ln("MaxPow_FSCC1").find("Schd11.setSrcRef").value == "@pv1Control/MaxPow_Res_FSCH01"
    assert model.addresses[("SITE_", "AccessPoint1")]["IP"] == "127.0.0.1"
    # Export -> parse -> export is stable.
    again = tmp_path / "again.cid"
    again.write_bytes(generate_scl(ders, ied_name="SITE_", site="s", address="127.0.0.1"))
    assert to_cfg(parse_scl(again)) == to_cfg(model)


BROKEN = [
    ("XML syntax", lambda t: t.replace("</Header>", "</Headr>", 1), "XML syntax"),
    ("missing LNodeType", lambda t: t.replace('lnType="DERScheduler_LPHD"', 'lnType="NoSuchType"', 1),
     "LNodeType 'NoSuchType' is not defined"),
    ("missing DOType", lambda t: t.replace('<DO name="SchdSt" type="DERScheduler_ENS_SchdSt"/>',
                                           '<DO name="SchdSt" type="Gone"/>', 1), "DOType 'Gone' is not defined"),
    ("missing DAType", lambda t: t.replace('type="CalendarTime"', 'type="NoCal"', 1), "DAType 'NoCal' is not defined"),
    ("bad enum literal", lambda t: t.replace("<Val>Hour</Val>", "<Val>Fortnight</Val>", 1),
     "'Fortnight' is not a literal of EnumType PeriodKind"),
    ("bad integer", lambda t: t.replace("<Val>3600</Val>", "<Val>an hour</Val>", 1), "expected an integer"),
    ("bad timestamp", lambda t: t.replace("1970-01-01T00:00:01Z", "yesterday", 1), "expected an ISO 8601 time"),
    ("unknown DOI", lambda t: t.replace('<DOI name="NumEntr">', '<DOI name="NumEntries">', 1),
     "which its type does not have"),
    ("duplicate type", lambda t: t.replace('<DAType id="AnalogueValue">',
                                           '<DAType id="CalendarTime"></DAType><DAType id="AnalogueValue">', 1),
     "duplicate id"),
    ("unknown bType", lambda t: t.replace('bType="INT16U"', 'bType="INT17U"', 1), "unknown bType 'INT17U'"),
]


@pytest.mark.parametrize("name, damage, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_scl_is_reported_with_file_and_line(tmp_path, reference_source, name, damage, message):
    text = reference_source.read_text(encoding="utf-8")
    broken = damage(text)
    assert broken != text, "the damage must apply"
    path = tmp_path / "broken.cid"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(SclError) as info:
        parse_scl(path)
    hits = [p for p in info.value.problems if message in p.message]
    assert hits, [str(p) for p in info.value.problems]
    changed_line = next(i for i, (a, b) in enumerate(zip(text.splitlines(), broken.splitlines()), 1) if a != b)
    problem = hits[0]
    assert problem.file == str(path) and problem.line is not None
    if name not in ("missing DOType", "missing DAType", "duplicate type"):  # reported where the type is used
        assert problem.line == changed_line, str(problem)
    assert str(problem).startswith(f"{path}:{problem.line}: ")


def test_not_scl_and_missing_file(tmp_path):
    other = tmp_path / "other.xml"
    other.write_text("<root/>")
    with pytest.raises(SclError, match="root element is not SCL"):
        parse_scl(other)
    with pytest.raises(SclError, match="cannot read"):
        parse_scl(tmp_path / "nope.cid")
