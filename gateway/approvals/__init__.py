"""5 approve: human approval of held calls.

service  requests bound to grant, server, tool, argument digest and policy revision
stores   where requests live: process memory, or Valkey shared by every replica
"""
