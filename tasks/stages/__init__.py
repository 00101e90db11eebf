"""Stages: one module per stage of the pipeline, each a plain function and its `Stage` declaration.

flows/dag.py lists which step runs which stage. A stage imports helpers (the sibling
packages of tasks/), never another stage (tests/test_layout.py holds it to that).
"""
