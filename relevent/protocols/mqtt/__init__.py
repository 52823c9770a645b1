"""MQTT LAN endpoint: FledgePower pivot commands, forecasts and measurements."""
