"""The parent supervisor: services, workers, the watchdog and the policies that drive them."""
