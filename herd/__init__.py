"""The herd core: the wire, the replicated state and its rules, and the Twisted adapters that
serve them (docs/architecture.md maps the modules)."""
