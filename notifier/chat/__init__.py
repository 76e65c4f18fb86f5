"""The Jabber bot's conversation, pure: chat in, planning lines out, replies for people.

`commands` reads a linked user's message into a step (`steps`), using `phrases` for what people
type and `turn` for what their words refer to; `replies` renders the answers from
`templates/xmpp/reply/`; `linking` tells users from strangers and links a stranger's JID.  The
wiring that runs the steps against a server is `notifier.botglue`."""
