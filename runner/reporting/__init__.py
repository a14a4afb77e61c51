"""The HTML run report and its SVG charts."""
