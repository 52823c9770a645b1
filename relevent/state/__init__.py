"""The site's persisted state as a whole: format migrations (`migrations`) and the
backup archive that moves a site to another box (`archive`).

The per-record mechanics (atomic writes, one file per actor key) stay in
`relevent/store.py`; this package is what spans records and builds.  Nothing here is
imported at package import time, so `relevent.store` can use `relevent.state.migrations`
without a cycle.
"""
