"""Watch mode: restart a service when files it watches change (`watch`, `watch_ignore`)."""
