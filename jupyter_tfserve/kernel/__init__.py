"""The kernel side: client, ``%tfserve`` magics, export and widgets (imports stay light until used)."""
