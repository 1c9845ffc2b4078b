"""The live web dashboard (`paysim dashboard`, and /ui in the HTTP API under run-all)."""
