"""ASGI, JSON-RPC and SSE plumbing, and the HTTP/1.1 protocol served with.

Imports nothing else of gateway (tests/test_layers.py): every other folder may use it.

asgi       ASGI scope/receive/send helpers (read a body, answer JSON or plain text)
jsonrpc    parse and validate JSON-RPC 2.0 messages; ``BadMessage``; error codes
sse        Server-Sent Events: encode, and read a stream with a size bound
protocol   uvicorn's httptools protocol with bounded heads, headers and connections
coalesce   one socket write per event-loop pass
"""
