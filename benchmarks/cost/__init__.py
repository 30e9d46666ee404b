"""The step-cost benchmark's pieces, one concern each (see step_cost.py)."""
