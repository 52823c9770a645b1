"""IEC 60870-5-104 controlled station (WAN): set-points and single commands from a controlling
station become one-entry schedules of their own; measured power, the active limit and the
schedule state are reported back (docs/iec104.md)."""
