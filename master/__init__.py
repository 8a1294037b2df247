"""The master: a pure state machine (`state`), its socket loop (`loop`) and the merger (`merge`)."""
