"""agentsight: zero-instrumentation observability for AI agents, with eBPF."""

__version__ = "0.1.0"
