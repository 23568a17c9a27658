"""The control plane: the API the CLI (and later the dashboard) talks to, and its client."""
