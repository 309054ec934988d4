"""The bottom of the project: settings, the Kafka and Redis client factories, the exception root.

Every other package may import ``core``; ``core`` imports none of them.
"""
