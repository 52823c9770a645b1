"""SG-Ready over MQTT relays (docs/devices.md, "SG-Ready over MQTT relays")."""
