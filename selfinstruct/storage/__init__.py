"""Where a run lives on disk: atomic files, the ledger, the shards and the manifest."""
