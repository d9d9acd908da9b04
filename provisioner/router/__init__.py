"""The SIP router (Kamailio) in front of the Asterisk nodes: its JSON-RPC client
(`rpc`) and the step that keeps its number table equal to our own (`sync`)."""
