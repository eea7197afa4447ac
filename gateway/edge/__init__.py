"""2 parse, and the MCP faces a client talks to; each keeps only its own wire format.

relay       ``/mcp/<server>``: the choke point (guard, keys, session ids, then the pipeline)
aggregate   ``/mcp``: one endpoint over every upstream, a multiplexing relay (agg/: its
            two eras' faces, sessions, names, merged lists, streams)
held        a ``wait``-mode call answered as an SSE stream while a human decides
elicit      in-band approval: the client's human asked through elicitation
inband      the tokens and waiters of in-band approval, apart from the wire
forward     one request forwarded upstream and its answer streamed back
clientview  what one caller may see of what an upstream sends (tools lists filtered)
replies     what the agent is told when the gateway answers a call itself
"""
