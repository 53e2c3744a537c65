"""RRSIS datasets, the dataset mapper and tokenization."""
