"""The notification layer: routes each change of the herd to the people it concerns, renders it
and delivers it by email, Jabber or the line protocol (docs/architecture.md)."""
