"""The retraining service: evidence-backed triggers, approval, dispatch, validation gate, canary, promote or roll back (see docs/retraining.md)."""
