"""A site serving a configured SCL file with a data set and a report control block, and
the `relevent schedule` client against a running site."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

from datetime import datetime, timezone

import open61850.mms as mms
from open61850.data import FloatData, IntData, TimestampData
from open61850.mms import rcb

from sitectl import REPO, Site, free_port, now_ms
from sitectl import mms_port as port_of
from test_mms_scheduling import LD

TEMPLATE = REPO / "relevent" / "scl" / "templates" / "der-scheduler.cid"
REPORTING = """
						<DataSet name="Outputs" desc="controller outputs">
							<FCDA ldInst="Control" prefix="ActPow_" lnClass="GGIO" lnInst="1" doName="AnOut1" fc="MX"/>
							<FCDA ldInst="Control" prefix="ActPow_" lnClass="FSCC" lnInst="1" doName="ActSchdRef" fc="ST"/>
						</DataSet>
						<ReportControl name="rcbOutputs" datSet="Outputs" rptID="outputs" buffered="false" confRev="1" intgPd="0">
							<TrgOps dchg="true" qchg="true"/>
							<OptFields seqNum="true" dataSet="true" reasonCode="true"/>
							<RptEnabled max="1"/>
						</ReportControl>"""


def leaves(value) -> list:
    """Every basic value inside a reported structure."""
    members = getattr(value, "members", None)
    if members is None:
        return [getattr(value, "value", value)]
    return [leaf for m in members for leaf in leaves(m)]


def test_reports_from_an_rcb_of_the_configured_scl(tmp_path):
    text = TEMPLATE.read_text(encoding="utf-8")
    ln0_end = text.index("</LN0>")
    scl = tmp_path / "with-reports.cid"
    scl.write_text(text[:ln0_end] + REPORTING + "\n\t\t\t\t\t" + text[ln0_end:], encoding="utf-8")
    state, port = tmp_path / "state", free_port()
    (tmp_path / "site.toml").write_text(f"""[site]\nname = "reports"\nstate_dir = "{state}"
[runtime]\nadmin_port = {free_port()}
[[wan]]\nname = "mms"\nprotocol = "mms"\nport = {port}\nscl = "{scl}"
[[der]]\nname = "der1"\n""")
    site = Site(tmp_path / "site.toml", state).start()
    reports: list = []
    got = threading.Event()

    def on_report(message):
        if mms.is_report(message):
            reports.append(mms.decode_report(message))
            got.set()
    client = mms.MmsClient.connect("127.0.0.1", port, on_information_report=on_report)
    try:
        rcb.enable(client, mms.ObjectName("LLN0$RP$rcbOutputs", LD))
        ref = f"{LD}/ActPow_FSCH01"
        start = now_ms() + 1500
        client.write_many([f"{LD}/ActPow_FSCH01$SP$NumEntr$setVal", f"{LD}/ActPow_FSCH01$SP$SchdIntv$setVal",
                           f"{LD}/ActPow_FSCH01$SP$SchdPrio$setVal", f"{LD}/ActPow_FSCH01$SP$ValASG001$setMag$f",
                           f"{LD}/ActPow_FSCH01$SP$StrTm01$setTm"],
                          [IntData(1), IntData(1), IntData(30), FloatData(777.0),
                           TimestampData(datetime.fromtimestamp(start / 1000, tz=timezone.utc))])
        mms.operate(client, f"{ref}.EnaReq", True)
        deadline = time.monotonic() + 5
        seen = []
        while time.monotonic() < deadline:
            got.wait(0.2)
            got.clear()
            seen = [r for r in reports if r.rpt_id == "outputs"
                    and any(777.0 in leaves(e.value) for e in r.entries)]
            if seen:
                break
        assert seen, f"no report with the new output; got {reports}"
        assert seen[0].data_set and seen[0].data_set.endswith("Outputs")
        # The active schedule changes in the same report or a later one.
        assert any(f"{LD}/ActPow_FSCH01" in leaves(e.value) for r in reports for e in r.entries)
    finally:
        client.close()
        site.stop()
        site.kill_everything()


def test_schedule_cli_writes_enables_shows_and_reports_refusals(make_site):
    site = make_site(schedules=2)
    server = f"127.0.0.1:{port_of(site)}"
    relevent = [sys.executable, "-m", "relevent", "schedule"]
    res = subprocess.run(relevent + ["write", server, "ActPow", "1", "--values", "5,6", "--interval", "2",
                                     "--start", "+30", "--priority", "25", "--enable"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "state     READY" in res.stdout and "values    5, 6" in res.stdout and "SchdPrio 25" in res.stdout
    res = subprocess.run(relevent + ["show", server, "ActPow", "res"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert res.returncode == 0 and "RUNNING" in res.stdout and "SchdPrio 10" in res.stdout
    res = subprocess.run(relevent + ["show", server, "MaxPow", "1"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)  # this DER has no MaxPow function
    assert res.returncode == 2 and "MaxPow_FSCH01 does not exist" in res.stderr
    res = subprocess.run(relevent + ["disable", server, "OnOff", "res"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert res.returncode == 1 and "no-access-authority" in res.stderr
    res = subprocess.run(relevent + ["write", server, "ActPow", "2", "--values", "1", "--interval", "0",
                                     "--start", "+30", "--enable"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert res.returncode == 1 and "SchdEnaErr 3 (SCHD_INTV)" in res.stderr
    res = subprocess.run(relevent + ["watch", server, "--count", "2"], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert res.returncode == 0 and "ActPow  output 11.0" in res.stdout
    res = subprocess.run(relevent + ["show", "127.0.0.1:1", "ActPow", "1"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert res.returncode == 2 and "cannot connect" in res.stderr


def test_the_name_plate_says_which_relevent_serves_the_model(make_site):
    from mmsclients import Open61850Client
    from relevent import __version__

    site = make_site(schedules=1)
    c = Open61850Client("127.0.0.1", port_of(site))
    try:
        assert c.read_str(f"{LD}/LLN0.NamPlt.swRev", "DC") == __version__
        assert c.read_str(f"{LD}/LLN0.NamPlt.vendor", "DC") == "relevent"
    finally:
        c.close()


def test_mms_identify_answers_relevent_and_its_version(make_site):
    # libiec61850's client (not open61850, not our server code) asks the Identify service.
    import pyiec61850.pyiec61850 as iec
    from relevent import __version__

    site = make_site(schedules=1)
    con = iec.IedConnection_create()
    try:
        _, error = iec.IedConnection_connect(con, "127.0.0.1", port_of(site))
        assert error == iec.IED_ERROR_OK, error
        mms = iec.IedConnection_getMmsConnection(con)
        err = iec.MmsError_create()
        identity = iec.MmsConnection_identify(mms, err)
        assert iec.MmsError_getValue(err) == 0 and identity is not None
        assert (identity.vendorName, identity.modelName, identity.revision) == (
            "relevent", "relevent DER edge runtime", __version__)
        iec.MmsServerIdentity_destroy(identity)
    finally:
        iec.IedConnection_close(con)
        iec.IedConnection_destroy(con)


def test_a_party_that_may_not_read_a_der_can_neither_read_nor_enable_its_report_control_block(tmp_path):
    text = TEMPLATE.read_text(encoding="utf-8")
    ln0_end = text.index("</LN0>")
    scl = tmp_path / "with-reports.cid"
    scl.write_text(text[:ln0_end] + REPORTING + "\n\t\t\t\t\t" + text[ln0_end:], encoding="utf-8")
    state, port = tmp_path / "state", free_port()
    # "blind" may only write (no read): it must not get der1's values through a report either.
    (tmp_path / "site.toml").write_text(f"""[site]\nname = "rcbparty"\nstate_dir = "{state}"
[runtime]\nadmin_port = {free_port()}
[[party]]\nname = "reader"\nmms_password = "reader-secret"
[[party]]\nname = "blind"\nmms_password = "blind-secret"\noperations = ["write"]
[[wan]]\nname = "mms"\nprotocol = "mms"\nport = {port}\nscl = "{scl}"\nanonymous = "none"
[[der]]\nname = "der1"\n""")
    site = Site(tmp_path / "site.toml", state).start()
    try:
        from mmsclients import LibIec61850Client
        import pyiec61850.pyiec61850 as iec
        for password, allowed in (("reader-secret", True), ("blind-secret", False)):
            c = LibIec61850Client("127.0.0.1", port, password=password)
            try:
                ref = f"{LD}/LLN0.RP.rcbOutputs"
                block = iec.ClientReportControlBlock_create(ref)
                got = iec.IedConnection_getRCBValues(c.con, ref, block)
                err = got[1] if isinstance(got, tuple) else got
                assert (err == iec.IED_ERROR_OK) is allowed, (password, err)
                iec.ClientReportControlBlock_setRptEna(block, True)
                err = iec.IedConnection_setRCBValues(c.con, block, iec.RCB_ELEMENT_RPT_ENA, True)
                err = err[1] if isinstance(err, tuple) else err
                assert (err == iec.IED_ERROR_OK) is allowed, (password, "enable", err)
                iec.ClientReportControlBlock_destroy(block)
            finally:
                c.close()
    finally:
        site.stop()
        site.kill_everything()
