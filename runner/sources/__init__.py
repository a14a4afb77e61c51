"""Readers behind the sources step: Bright Data, HTTP, local files, pydoc; fetching and HTML conversion."""
