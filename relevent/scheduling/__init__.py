"""The IEC 61850-90-10 scheduling core: pure, time passed in as integer ms (UTC)."""
