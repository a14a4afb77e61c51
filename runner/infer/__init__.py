"""Generation, harmony parsing, export tools and the HTTP server."""
