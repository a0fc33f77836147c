"""Roost training side: the fast.ai lesson-1 recipes, and the export that writes bundles."""
