"""devmesh: run a project's dev services and share them across a team's machines."""

__version__ = "0.2.0.dev0"
