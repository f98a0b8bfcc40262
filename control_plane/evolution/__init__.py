"""Evolution API v2 compatibility facade (issue 20): docs/evolution.md."""
