"""What tools exist: the risk catalogue, tool pins, and discovery from the upstreams.

catalog    every upstream tool gets a ``kind`` and a ``risk`` (policy override, then hints)
pins       a digest of each tool's definition, so a server cannot quietly change a tool
discovery  ask each upstream for its tools with the SDK's client
"""
