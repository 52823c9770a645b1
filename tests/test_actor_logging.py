"""In an actor process only the actor's own thread logs through thespian's transport, which
is not thread-safe; other threads (libiec61850's, an HTTP server's, an asyncio loop's) write
to the site's log themselves (relevent/runtime/logs.py `guard_handlers`).  A refused MMS
write, logged on libiec61850's thread, crashed the MMS endpoint under load: "dictionary
changed size during iteration" in thespian's transport loop.

Unit tests with thespian's own forwarding handler and a transport that records who called
it, then a real site whose MMS endpoint logs a refusal from libiec61850's thread."""
from __future__ import annotations

import logging
import threading

from thespian.system.logdirector import ThespianLogForwardHandler

from mmsclients import LibIec61850Client
from relevent.runtime.logs import direct_logger, guard_handlers, log_config
from sitectl import Site, free_port, mms_port, running, small_topology, until


class Transport:
    """What ThespianLogForwardHandler sends through: records the thread of each transmit."""
    myAddress = "ActorAddr-(T|:1)"

    def __init__(self) -> None:
        self.threads: list[str] = []

    def scheduleTransmit(self, _address, intent) -> None:  # noqa: N802 - thespian's name
        self.threads.append(threading.current_thread().name)


def actor_logger(tmp_path) -> tuple[logging.Logger, Transport]:
    transport = Transport()
    logger = logging.Logger("actor")   # outside logging's tree: the test's own handlers stay as they are
    logger.addHandler(ThespianLogForwardHandler("ActorAddr-(T|:2)", transport))
    guard_handlers(logger, threading.current_thread(), direct_logger(log_config(str(tmp_path), "INFO", False)))
    return logger, transport


def log_from_another_thread(logger: logging.Logger, message: str, *args) -> None:
    other = threading.Thread(target=logger.warning, args=(message, *args), name="libiec61850-like")
    other.start()
    other.join()


def test_the_actor_threads_records_go_through_thespian_and_no_other_threads_do(tmp_path):
    logger, transport = actor_logger(tmp_path)
    logger.warning("from the actor thread")
    log_from_another_thread(logger, "from another thread")
    assert transport.threads == [threading.current_thread().name]


def test_another_threads_record_is_written_to_relevent_log_with_its_level_and_pid(tmp_path):
    logger, _ = actor_logger(tmp_path)
    log_from_another_thread(logger, "refused rule=party:operation")
    line = (tmp_path / "relevent.log").read_text().strip()
    assert line.endswith("refused rule=party:operation") and " WARNING actor pid=" in line, line


def test_the_site_log_is_opened_only_once_another_thread_logs(tmp_path):
    logger, _ = actor_logger(tmp_path)
    logger.warning("from the actor thread")
    assert not (tmp_path / "relevent.log").exists()
    log_from_another_thread(logger, "now")
    assert (tmp_path / "relevent.log").exists()


def test_repeats_from_another_thread_are_limited_like_the_actor_threads(tmp_path):
    from relevent.runtime.logs import REPEAT_BURST
    logger, _ = actor_logger(tmp_path)
    for i in range(REPEAT_BURST + 5):
        log_from_another_thread(logger, "rejected payload %s", i)
    lines = (tmp_path / "relevent.log").read_text().splitlines()
    assert len(lines) == REPEAT_BURST, lines


def test_a_refusal_logged_on_libiec61850s_thread_reaches_relevent_log(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text(small_topology(tmp_path / "state", free_port(), wan='anonymous = "read"'))
    with running(Site(path, tmp_path / "state")) as site:
        client = LibIec61850Client("127.0.0.1", mms_port(site))
        try:
            assert client.write_int("DER_Scheduler_Control/ActPow_FSCH01.NumEntr.setVal", 2) == "access-denied"
        finally:
            client.close()
        pid = site.node("mms")["pid"]
        until(lambda: any(f"pid={pid} " in line and "refused rule=party:operation" in line
                          for line in (tmp_path / "state" / "relevent.log").read_text().splitlines()),
              "the MMS endpoint's refusal in relevent.log", timeout=10)
        assert site.node("mms")["restarts"] == 0
