"""Text machinery of the data half: cleaning rules, sentences, sections, pairing, dedup, the data report."""
