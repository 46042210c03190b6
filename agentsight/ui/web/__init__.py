"""The web UI: a session in the browser (`serve`), or a recording as it
happens (`record --serve`). server.py serves it, store.py reads the
session file, feed.py is the live sink, static/ is the page."""
