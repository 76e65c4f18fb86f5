"""The web: a fourth way into the herd beside the line protocol, the Jabber bot and mail.

It uses the herd only through `herd.api` and `herd.config` (like `notifier/`), and writes only
through the line protocol (`run_as`).  Pure modules: `model` (the event page), `svg` (where
everyone is), `rules` (cookies, origins, the access log), `templates`, `host`, `prefs`
(unsubscribing and the settings form); the twisted.web adapters: `site`, `resources`,
`prefs_site`.  The wiring (`herd.service`) builds it.
"""
