"""The alerting service: rules, Alertmanager semantics, signed delivery (see docs/alerting.md)."""
