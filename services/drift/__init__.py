"""The drift service: online drift detection over the request, response and feedback
streams (faust-streaming app, river detectors, windowed two-sample tests against a
pinned reference), publishing DriftEvents with their evidence."""
