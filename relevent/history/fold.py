"""History's decisions, pure: which raw samples to fold into 15-minute rows, how, and what
retention removes.  relevent/history/store.py carries them out in SQLite.

* Raw samples (one per DER per observer sample, `[runtime] sample_s`) are kept RAW_KEEP_MS
  (12 h: the specification's monitoring window, at full resolution).
* Older ones are folded into BUCKET_MS (15 min) rows per DER: mean, min and max of the
  measured power over the samples that had one, and the last command (set-point, limit,
  connected, source schedules) of the bucket.  Only whole buckets are folded (the cut-off
  is aligned), so a bucket is normally folded once; a sample that arrives for a bucket
  already folded (a clock set back) is merged into it (`merge`).
* Retention (`[runtime] history_days`) removes rows and events older than that.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

BUCKET_MS = 15 * 60 * 1000
RAW_KEEP_MS = 12 * 3600 * 1000
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class Sample:
    """One raw sample of a DER (a row of table `sample`); `source` is an id of table `source`."""
    der: str
    t: int
    measured_w: float | None
    setpoint_w: float | None
    limit_w: float | None
    connected: bool | None
    source: int | None


@dataclass(frozen=True)
class Bucket:
    """15 minutes of a DER (a row of table `sample_15m`): `t` is its start, `n` the samples
    with a measurement, `last_t` the newest sample folded in (its command is the bucket's)."""
    der: str
    t: int
    n: int
    mean_w: float | None
    min_w: float | None
    max_w: float | None
    last_t: int
    setpoint_w: float | None
    limit_w: float | None
    connected: bool | None
    source: int | None


def bucket_start(t: int) -> int:
    return t - t % BUCKET_MS


def fold_cutoff(now_ms: int, raw_keep_ms: int = RAW_KEEP_MS) -> int:
    """Raw samples before this time are folded: the start of the bucket holding
    now - raw_keep_ms, so only whole buckets are folded."""
    return bucket_start(now_ms - raw_keep_ms)


def retention_cutoff(now_ms: int, days: float) -> int:
    """Rows and events before this time are removed."""
    return now_ms - int(days * DAY_MS)


def _one(sample: Sample) -> Bucket:
    w = sample.measured_w
    return Bucket(sample.der, bucket_start(sample.t), 0 if w is None else 1, w, w, w, sample.t,
                  sample.setpoint_w, sample.limit_w, sample.connected, sample.source)


def merge(a: Bucket, b: Bucket) -> Bucket:
    """Two folds of the same DER and bucket as one: n-weighted mean, min, max, and the
    command of the newer of their last samples."""
    assert (a.der, a.t) == (b.der, b.t)
    n = a.n + b.n
    if a.n == 0 or b.n == 0:
        mean, low, high = (a.mean_w, a.min_w, a.max_w) if b.n == 0 else (b.mean_w, b.min_w, b.max_w)
    else:
        mean = (a.mean_w * a.n + b.mean_w * b.n) / n
        low, high = min(a.min_w, b.min_w), max(a.max_w, b.max_w)
    newer = b if b.last_t >= a.last_t else a
    return replace(newer, n=n, mean_w=mean, min_w=low, max_w=high)


def fold(samples: list[Sample]) -> list[Bucket]:
    """The buckets of `samples` (any order), sorted by DER and start."""
    buckets: dict[tuple[str, int], Bucket] = {}
    for sample in samples:
        one = _one(sample)
        key = (one.der, one.t)
        buckets[key] = merge(buckets[key], one) if key in buckets else one
    return [buckets[key] for key in sorted(buckets)]
