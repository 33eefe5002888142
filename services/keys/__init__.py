"""The subject key service: one data key per data subject, for crypto-shredding."""
