"""DER history in an embedded SQLite database, `<state_dir>/history.sqlite`.

Written only by the runner's observer thread (relevent/observe/observer.py), never on a
controller's path: per DER per sample the measured power, the command (set-point, limit,
connected) and the schedules it came from, plus events (actor state changes, restarts,
link changes, schedule state changes, refusals).  Raw samples are kept 12 h, then folded
into 15-minute rows; everything older than `[runtime] history_days` is removed.

* fold.py: the decisions (folding, retention), pure;
* schema.py: the schema and its versions;
* store.py: the writer and the read-only reader (`relevent history`, GET /api/v1/history/{der}).

docs/observability.md describes the schema and the commands.
"""
from relevent.history.schema import HistoryError, TooNew
from relevent.history.store import HISTORY_FILE, HistoryWriter, history_path, read_history

__all__ = ["HISTORY_FILE", "HistoryError", "HistoryWriter", "TooNew", "history_path", "read_history"]
