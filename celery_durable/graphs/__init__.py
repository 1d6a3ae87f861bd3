"""Graph definitions: the builder users write with, and the checks on what they write."""
