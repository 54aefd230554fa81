"""Evaluation against the synthetic truth: reads a world's truth/ folder, never used by a
production run. Kept apart so nothing in the stages can reach the answers."""
