"""The pipeline's services; each is only its decide step over the shared loop (loop.py)."""
