"""Chat rendering and the response-only loss mask with its verification."""
