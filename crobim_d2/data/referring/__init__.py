"""Referring datasets generated from object annotations, with one grammar shared by every generator."""
