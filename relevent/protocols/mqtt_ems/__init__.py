"""The local EMS over MQTT (WAN): ReLevENT's HEDERA schedule requests, with a reply (docs/mqtt-ems.md)."""
