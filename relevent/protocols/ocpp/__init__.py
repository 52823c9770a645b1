"""OCPP 1.6J and 2.0.1 LAN side: the site is the CSMS of its EV chargers (docs/ocpp.md).

`profile` is pure (a DER's command -> a SetChargingProfile payload, meter values -> W);
`meter` too (W derived from successive energy register readings, for chargers that sample
no power);
`endpoint` is the websocket server and the per-charger sessions."""
