"""The control plane: the socket's protocol, the daemon's server, the CLI's client."""
