"""The observer: metrics and history of a running site, off every hot path.

The runner (relevent/runtime/runner.py) gathers the status tree every `[runtime] sample_s`
(the same tree `relevent status --json` shows) and hands it to the observer thread
(`observer.Observer`), which feeds

* the metrics: `metrics.families` turns the latest tree into Prometheus metric families,
  served at /metrics on `[runtime] metrics` (`serve.MetricsServer`);
* the history: DER samples and the events of `events.diff` go into the site's SQLite
  database (relevent/history).

Every decision is a pure function of dicts, unit-tested without threads or sockets:

* `extract`: what the tree says (actors, links under the 15 s rule, DER samples,
  schedules, refusals, switch lateness);
* `counters.accumulate`: counters that stay monotonic when the actor keeping them restarts;
* `metrics.families`: tree + counters -> metric families;
* `events.diff`: (previous tree, tree) -> events.

docs/observability.md lists the metrics and the history schema.
"""
