"""The proxy worker: an HTTP/1.1 reverse proxy (uvloop + httptools) routing by name and path."""
