"""What the server does with each kind of line it serves: one module per thing served, each
reaching the server through `herd.handlers.core.Core`."""
