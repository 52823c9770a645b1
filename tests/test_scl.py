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


# -- the `relevent scl export|check` commands (README "Commands") ----------------------------------
SITE = """[site]
name = "s"
[[wan]]
name = "mms"
protocol = "mms"
port = 10102
[[der]]
name = "pv1"
functions = ["ActPow", "MaxPow"]
schedules = 4
[[der]]
name = "bat"
functions = ["OnOff"]
schedules = 2
ld_inst = "Battery"
"""


def test_scl_export_writes_the_sites_model_and_scl_check_reads_it_back_or_names_the_broken_line(tmp_path, capsys):
    """README "Commands": `relevent scl export FILE -o site.cid` (the model the MMS endpoint
    serves) and `relevent scl check some.scd` (parse any SCL, report problems with lines)."""
    from relevent.cli import main

    topo = tmp_path / "site.toml"
    topo.write_text(SITE)
    cid = tmp_path / "site.cid"
    assert main(["scl", "export", str(topo), "-o", str(cid)]) == 0
    ied = parse_scl(cid).ied()
    assert [ld.inst for ld in ied.ldevices] == ["pv1Control", "Battery"]   # one LD per DER, as the endpoint serves
    assert [ln.name for ln in ied.ld("pv1Control").lns if ln.name.startswith("MaxPow_FSCH")] == \
        ["MaxPow_FSCH01", "MaxPow_FSCH02", "MaxPow_FSCH03", "MaxPow_FSCH04"]
    assert [ln.name for ln in ied.ld("Battery").lns if "FSCH" in ln.name] == \
        ["OnOff_FSCH01", "OnOff_FSCH02", "OnOff_Res_FSCH01"]
    capsys.readouterr()

    assert main(["scl", "check", str(cid)]) == 0
    assert f"IED {ied.name}: 2 logical devices" in capsys.readouterr().out

    text = cid.read_text(encoding="utf-8")
    broken = text.replace('<DOI name="NumEntr">', '<DOI name="NumEntries">', 1)
    assert broken != text
    line = next(i for i, (a, b) in enumerate(zip(text.splitlines(), broken.splitlines()), 1) if a != b)
    bad = tmp_path / "broken.cid"
    bad.write_text(broken, encoding="utf-8")
    assert main(["scl", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:{line}: " in err and "NumEntries" in err, err
