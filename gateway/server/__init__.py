"""The running process, on top of everything else: the composition root.

build      the ``Gateway`` built once from config
app        the Litestar app: the MCP faces, admin, console, health and metrics mounted
admin      the admin API (approvals, reload, tools, counters)
console    the operator's web console over the admin API (sign-in, live decisions)
lifecycle  background work: the tool catalogue refreshed, upstream probes, the file watcher
reload     hot reload of rule files and pins; a policy that fails to load is refused
"""
