"""Model architectures. See attention.py for the dimension legend used in shape comments."""
