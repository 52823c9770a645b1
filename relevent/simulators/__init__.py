"""Simulated devices and an embedded MQTT broker, run by the site as supervised actors
(topology `[[simulator]]`), for demos, tests and commissioning without hardware."""
