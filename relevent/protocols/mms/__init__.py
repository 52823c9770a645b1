"""IEC 61850 MMS (WAN): the 90-10 scheduling model served with libiec61850."""
