"""Modbus TCP LAN endpoint: SunSpec and plain register devices."""
