"""Worker processes: each runs one role (control now; proxy, discovery, health later)."""
