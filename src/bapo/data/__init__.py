"""Data: records in, validated preference pairs out; readers of public data sets; users and their profiles."""
