"""Risk decisions on the ledger: decision tables over model scores (issue 8)."""
