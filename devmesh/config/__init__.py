"""Project configuration: find it (`find_project`), read it (`load`), show it (`describe`).

Everything else in devmesh sees only the frozen dataclasses of `devmesh.config.model`.
"""

from devmesh.config.describe import describe
from devmesh.config.load import find_project, load
from devmesh.config.model import (
    Config,
    ConfigError,
    ConfigIssue,
    ConfigSource,
    DashboardConfig,
    DependCondition,
    DiscoveryConfig,
    HealthCheck,
    HostHeader,
    LanAccess,
    LogConfig,
    MeshConfig,
    ProxyConfig,
    RestartPolicy,
    ServiceConfig,
    TracingConfig,
)

__all__ = [
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConfigSource",
    "DashboardConfig",
    "DependCondition",
    "DiscoveryConfig",
    "HealthCheck",
    "HostHeader",
    "LanAccess",
    "LogConfig",
    "MeshConfig",
    "ProxyConfig",
    "RestartPolicy",
    "ServiceConfig",
    "TracingConfig",
    "describe",
    "find_project",
    "load",
]
